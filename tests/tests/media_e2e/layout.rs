//! Where files go and what they are called: nested and flat layouts, the
//! sequential, system and timestamp segment namings and their granularity.

use oxcast_tests::media::{
    assert_close, assert_running, files_under, publish_to_end, segment_id, Fixture, Layout, Server,
};

use crate::{check_playlist, check_segments_exist, now_ms, publish_fixture, start};

#[test]
fn nested_layout_with_sequential_naming() {
    let (mut server, _, pl) = publish_fixture(
        Server::builder()
            .hls("fragment", "1s")
            .hls("fragment-naming", "sequential"),
        Fixture::Av8s,
        "nested1",
    );

    let root = server.root().to_path_buf();
    assert_eq!(
        server.playlist_path("nested1"),
        root.join("nested1").join("index.m3u8")
    );
    assert!(
        !root.join("nested1.m3u8").exists(),
        "flat playlist written in nested mode"
    );
    assert!(pl.segments.len() >= 6, "8 s at 1 s fragments: {pl:#?}");
    let ids: Vec<u64> = pl.segments.iter().map(|s| segment_id(&s.uri)).collect();
    for (s, id) in pl.segments.iter().zip(&ids) {
        assert_eq!(s.uri, format!("{id}.ts"), "nested URIs are bare <id>.ts");
        assert!(
            root.join("nested1").join(&s.uri).is_file(),
            "{} missing",
            s.uri
        );
    }
    for w in ids.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "sequential ids must be consecutive: {ids:?}"
        );
    }
    // Sequential ids follow the media sequence.
    let offset: Vec<i128> = pl
        .segments
        .iter()
        .zip(&ids)
        .map(|(s, id)| i128::from(*id) - i128::from(s.sequence))
        .collect();
    assert!(
        offset.windows(2).all(|w| w[0] == w[1]),
        "ids vs media sequence: {offset:?}"
    );
    for f in files_under(&root) {
        assert!(
            f.starts_with(root.join("nested1")),
            "file outside the stream directory: {}",
            f.display()
        );
    }
    assert_running(&mut server);
}

#[test]
fn flat_layout() {
    let (mut server, _, pl) = publish_fixture(
        Server::builder()
            .hls("fragment", "1s")
            .hls("nested", "false")
            .hls("fragment-naming", "sequential"),
        Fixture::Av8s,
        "flat1",
    );

    let root = server.root().to_path_buf();
    assert!(root.join("flat1.m3u8").is_file());
    assert!(
        !root.join("flat1").exists(),
        "no stream directory in flat mode"
    );
    assert!(pl.segments.len() >= 6, "{pl:#?}");
    for s in &pl.segments {
        let id = segment_id(&s.uri);
        assert_eq!(
            s.uri,
            format!("flat1-{id}.ts"),
            "flat URIs are <stream>-<id>.ts"
        );
        assert!(root.join(&s.uri).is_file(), "{} missing", s.uri);
    }
    let on_disk = Layout::Flat.segment_files(&root, "flat1");
    assert_eq!(
        on_disk.len(),
        pl.segments.len(),
        "segment files: {on_disk:?}"
    );
    assert_running(&mut server);
}

#[test]
fn system_naming_is_wall_clock_milliseconds() {
    let (mut server, media) = start(Server::builder().hls("fragment", "2s"), Fixture::Av8s);
    let t0 = now_ms();
    let pl = publish_to_end(&server, "sys1", media);
    let t1 = now_ms();
    check_playlist(&pl);
    check_segments_exist(&server, "sys1", &pl);
    assert!(pl.segments.len() >= 3, "{pl:#?}");
    let ids: Vec<i64> = pl
        .segments
        .iter()
        .map(|s| {
            let stem = s.uri.trim_end_matches(".ts");
            assert_eq!(stem.len(), 13, "system ids have 13 digits: {}", s.uri);
            segment_id(&s.uri) as i64
        })
        .collect();
    for id in &ids {
        assert!(
            (t0 - 1000..=t1 + 1000).contains(id),
            "id {id} not within the publish wall-clock window [{t0}, {t1}]"
        );
    }
    for (w, s) in ids.windows(2).zip(&pl.segments) {
        let step = (w[1] - w[0]) as f64;
        assert_close(
            &format!("wall-clock step after {}", s.uri),
            step,
            s.duration * 1000.0,
            500.0,
        );
    }
    assert_running(&mut server);
}

#[test]
fn timestamp_naming_is_90khz_dts() {
    let (mut server, _, pl) = publish_fixture(
        Server::builder()
            .hls("fragment", "2s")
            .hls("fragment-naming", "timestamp"),
        Fixture::Av8s,
        "ts1",
    );
    check_segments_exist(&server, "ts1", &pl);
    assert!(pl.segments.len() >= 3, "{pl:#?}");
    let ids: Vec<u64> = pl.segments.iter().map(|s| segment_id(&s.uri)).collect();
    for (w, s) in ids.windows(2).zip(&pl.segments) {
        assert!(w[1] > w[0], "timestamp ids must increase: {ids:?}");
        let step = (w[1] - w[0]) as f64;
        // One 25 fps frame is 3600 ticks.
        assert_close(
            &format!("90 kHz step after {}", s.uri),
            step,
            s.duration * 90_000.0,
            3600.0,
        );
    }
    // The first segment starts at the stream's first DTS (0 in the FLV), so
    // it must not look like a wall-clock or millisecond value.
    assert!(
        ids[0] < 10 * 90_000,
        "first timestamp id {} is not near the stream start",
        ids[0]
    );
    assert_running(&mut server);
}

#[test]
fn naming_granularity_rounds_ids_down() {
    let (mut server, _, pl) = publish_fixture(
        Server::builder()
            .hls("fragment", "2s")
            .hls("fragment-naming-granularity", "1000"),
        Fixture::Av8s,
        "gran1",
    );
    check_segments_exist(&server, "gran1", &pl);
    assert!(pl.segments.len() >= 3, "{pl:#?}");
    let ids: Vec<u64> = pl.segments.iter().map(|s| segment_id(&s.uri)).collect();
    for id in &ids {
        assert_eq!(
            id % 1000,
            0,
            "id {id} is not a multiple of the granularity: {ids:?}"
        );
    }
    assert!(
        ids.windows(2).all(|w| w[1] > w[0]),
        "ids must stay distinct and increase: {ids:?}"
    );
    assert_running(&mut server);
}
