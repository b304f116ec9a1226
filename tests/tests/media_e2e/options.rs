//! Playlist options from flags and the config file: EVENT playlists, base
//! URL, datetime none, settings read from a config file.

use oxcast_tests::media::{
    assert_close, assert_running, need_ffmpeg, publish_to_end, publish_watching, require,
    segment_id, wait_ended, Fixture, Layout, Playlist, Server,
};

use crate::{check_playlist, start};

#[test]
fn event_playlist_only_appends() {
    let (mut server, media) = start(
        Server::builder()
            .hls("fragment", "1s")
            .hls("playlist-length", "3s")
            .hls("type", "event"),
        Fixture::Av8s,
    );
    let mut previous: Option<Playlist> = None;
    publish_watching(&server, "ev1", media, |pl| {
        check_playlist(pl);
        assert_eq!(pl.playlist_type.as_deref(), Some("EVENT"));
        assert_eq!(
            pl.media_sequence, 0,
            "an EVENT playlist never removes segments"
        );
        if let Some(prev) = &previous {
            assert!(
                pl.segments.len() >= prev.segments.len()
                    && pl.segments[..prev.segments.len()]
                        .iter()
                        .zip(&prev.segments)
                        .all(|(a, b)| a.uri == b.uri && a.duration_text == b.duration_text),
                "EVENT playlist changed existing entries:\n{prev:#?}\n->\n{pl:#?}"
            );
        }
        previous = Some(pl.clone());
    });
    let pl = wait_ended(&server.playlist_path("ev1"));
    check_playlist(&pl);
    assert_eq!(pl.playlist_type.as_deref(), Some("EVENT"));
    assert_close(
        "EVENT playlist keeps all media",
        pl.total_duration(),
        media.duration,
        0.25,
    );
    assert_running(&mut server);
}

#[test]
fn base_url_prefix_and_datetime_none() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let base = "http://cdn.example.test/hls/base1/";
    let mut server = Server::builder()
        .hls("fragment", "2s")
        .hls("base-url", base)
        .hls("datetime", "none")
        .start();
    let pl = publish_to_end(&server, "base1", media);
    check_playlist(&pl);
    for s in &pl.segments {
        assert!(
            s.program_date_time.is_none(),
            "PROGRAM-DATE-TIME with datetime none"
        );
        let name = s
            .uri
            .strip_prefix(base)
            .unwrap_or_else(|| panic!("URI {} lacks the base URL {base}", s.uri));
        assert!(
            server.segment_path("base1", name).is_file(),
            "{name} missing on disk"
        );
    }
    assert_running(&mut server);
}

#[test]
fn config_file_settings_apply() {
    need_ffmpeg();
    let media = require(Fixture::Av8s);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("oxcast.yaml");
    std::fs::write(
        &config,
        "rtmp:\n  app: fromconfig\nhls:\n  fragment: 1s\n  nested: false\n  \
         fragmentNaming: sequential\n  datetime: none\n",
    )
    .expect("write config");
    let mut server = Server::builder()
        .app_from_config("fromconfig")
        .expect_layout(Layout::Flat)
        .arg("--config")
        .arg(&config)
        .start();
    let pl = publish_to_end(&server, "cfg1", media);
    check_playlist(&pl);
    assert!(
        server.root().join("cfg1.m3u8").is_file(),
        "flat layout from the config file"
    );
    assert!(
        pl.segments.len() >= 6,
        "1 s fragments from the config file: {pl:#?}"
    );
    for s in &pl.segments {
        assert!(s.uri.starts_with("cfg1-"), "flat naming: {}", s.uri);
        assert!(segment_id(&s.uri) < 1000, "sequential naming: {}", s.uri);
        assert!(
            s.program_date_time.is_none(),
            "datetime none from the config file"
        );
    }
    assert_running(&mut server);
}
