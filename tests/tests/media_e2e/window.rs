//! The live playlist over time: program date-times, the sliding window and
//! its cleanup (and cleanup off), discontinuity numbering as the window slides.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use oxcast_tests::media::{
    assert_running, poll_until, publish_watching, read_playlist, wait_ended, wait_playlist,
    wait_until, Fixture, Layout, Playlist, Publisher, Server, ServerBuilder, END_TIMEOUT,
};

use crate::{check_playlist, check_segments_exist, now_ms, start};

/// A 3 s window of 1 s sequential segments: it slides over 14 s of media.
fn sliding_window() -> ServerBuilder {
    Server::builder()
        .hls("fragment", "1s")
        .hls("playlist-length", "3s")
        .hls("fragment-naming", "sequential")
}

/// A 2 s window of 1 s sequential segments, cleanup off: the window slides
/// over 8 s of media and every segment stays on disk.
fn short_window_without_cleanup() -> ServerBuilder {
    Server::builder()
        .hls("fragment", "1s")
        .hls("playlist-length", "2s")
        .hls("fragment-naming", "sequential")
        .hls("cleanup", "false")
}

#[test]
fn program_date_time_steps_and_survives_the_sliding_window() {
    let (mut server, media) = start(sliding_window(), Fixture::Av14s);
    let t0 = now_ms() as f64;
    let mut pdt_by_uri: BTreeMap<String, String> = BTreeMap::new();
    let mut max_sequence = 0;
    let mut check = |pl: &Playlist| {
        check_playlist(pl);
        max_sequence = max_sequence.max(pl.media_sequence);
        for s in &pl.segments {
            let pdt = s
                .program_date_time
                .as_ref()
                .unwrap_or_else(|| panic!("segment {} has no PROGRAM-DATE-TIME:\n{pl:#?}", s.uri));
            let now = now_ms() as f64;
            assert!(
                (t0 - 2000.0..=now + 1000.0).contains(&pdt.unix_millis()),
                "PDT {} of {} is not wall-clock time of this test",
                pdt.text,
                s.uri
            );
            let prev = pdt_by_uri.insert(s.uri.clone(), pdt.text.clone());
            if let Some(prev) = prev {
                assert_eq!(
                    prev, pdt.text,
                    "PDT of {} changed between playlist updates",
                    s.uri
                );
            }
        }
        for w in pl.segments.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if b.discontinuity {
                continue;
            }
            let (pa, pb) = match (&a.program_date_time, &b.program_date_time) {
                (Some(pa), Some(pb)) => (pa, pb),
                _ => continue,
            };
            let step_us = pb.unix_micros - pa.unix_micros;
            let extinf_us = (a.duration * 1e6).round() as i64;
            assert!(
                (step_us - extinf_us).abs() <= 1000,
                "PDT step {} -> {} is {step_us} µs but EXTINF of {} is {} s",
                pa.text,
                pb.text,
                a.uri,
                a.duration_text
            );
        }
    };
    let snapshots = publish_watching(&server, "pdt1", media, &mut check);
    let pl = wait_ended(&server.playlist_path("pdt1"));
    check(&pl);
    assert!(
        snapshots.len() >= 5,
        "too few playlist updates seen: {}",
        snapshots.len()
    );
    assert!(
        max_sequence >= 5,
        "the window should have slid (media sequence reached only {max_sequence})"
    );
    assert_running(&mut server);
}

#[test]
fn window_is_bounded_and_old_segments_are_cleaned_up() {
    let (mut server, media) = start(sliding_window(), Fixture::Av14s);
    let key = "win1";
    let path = server.playlist_path(key);
    let mut publisher = Publisher::start(media, &server.rtmp_url(key));
    let mut listed: BTreeSet<String> = BTreeSet::new();
    let mut previous: Option<Playlist> = None;
    let mut first_uri: Option<String> = None;
    let mut deleted_while_live = false;
    let mut left_window = 0;
    // Every snapshot while the stream is live, until the publisher is done
    // (publisher.wait below bounds it).
    poll_until(
        Duration::from_secs_f64(media.duration) + Duration::from_secs(30),
        || {
            if !publisher.is_running() {
                return Some(());
            }
            if let Some(pl) = read_playlist(&path) {
                if previous.as_ref() != Some(&pl) {
                    check_playlist(&pl);
                    // Every listed segment exists (no racy cleanup).
                    check_segments_exist(&server, key, &pl);
                    assert!(
                        pl.total_duration() <= 3.0 + 1.0 + 0.05,
                        "window holds {} s > playlist_length 3s + one fragment:\n{pl:#?}",
                        pl.total_duration()
                    );
                    // A segment that just left the window is still on disk (grace).
                    if let Some(prev) = &previous {
                        let now: BTreeSet<&str> =
                            pl.segments.iter().map(|s| s.uri.as_str()).collect();
                        for s in prev
                            .segments
                            .iter()
                            .filter(|s| !now.contains(s.uri.as_str()))
                        {
                            left_window += 1;
                            assert!(
                                server.segment_path(key, &s.uri).exists(),
                                "{} was deleted the moment it left the window (no grace)",
                                s.uri
                            );
                        }
                    }
                    if first_uri.is_none() {
                        first_uri = pl.segments.first().map(|s| s.uri.clone());
                    }
                    listed.extend(pl.segments.iter().map(|s| s.uri.clone()));
                    previous = Some(pl);
                }
            }
            if let Some(first) = &first_uri {
                if !server.segment_path(key, first).exists() {
                    deleted_while_live = true;
                }
            }
            None
        },
    );
    let done = publisher.wait();
    assert!(done.success(), "publisher failed: {}", done.stderr);
    assert!(left_window >= 3, "the window never slid");
    assert!(
        deleted_while_live,
        "the first segment {first_uri:?} was not deleted while the stream was live \
         (grace = segment duration + playlist_length = 4 s; the stream ran 14 s)"
    );
    let pl = wait_ended(&path);
    check_playlist(&pl);
    // An ended stream's files are removed after playlist_length.
    wait_until(
        "all segment files of the ended stream deleted",
        Duration::from_secs(20),
        || Layout::Nested.segment_files(server.root(), key).is_empty(),
    );
    for uri in &listed {
        assert!(!server.segment_path(key, uri).exists(), "{uri} left behind");
    }
    assert_running(&mut server);
}

#[test]
fn cleanup_off_keeps_every_segment() {
    let (mut server, media) = start(short_window_without_cleanup(), Fixture::Av8s);
    let key = "keep1";
    let mut listed: BTreeSet<String> = BTreeSet::new();
    publish_watching(&server, key, media, |pl| {
        check_playlist(pl);
        listed.extend(pl.segments.iter().map(|s| s.uri.clone()));
    });
    let pl = wait_ended(&server.playlist_path(key));
    listed.extend(pl.segments.iter().map(|s| s.uri.clone()));
    assert!(
        pl.media_sequence > 0,
        "the 2 s window should have slid over 8 s of media:\n{pl:#?}"
    );
    // Nothing to wait for: give cleanup more than its grace
    // (segment + playlist_length = 3 s) and the end-of-stream delay (2 s).
    std::thread::sleep(Duration::from_secs(6));
    for uri in &listed {
        assert!(
            server.segment_path(key, uri).exists(),
            "{uri} deleted although cleanup is off"
        );
    }
    assert!(
        server.playlist_path(key).exists(),
        "playlist deleted although cleanup is off"
    );
    assert!(Layout::Nested.segment_files(server.root(), key).len() > pl.segments.len());
    assert_running(&mut server);
}

/// Discontinuity number of each URI: discontinuity sequence plus the
/// DISCONTINUITY tags up to and including the segment (RFC 8216 §6.2.2).
fn discontinuity_numbers(pl: &Playlist) -> Vec<(String, u64)> {
    let mut n = pl.discontinuity_sequence;
    pl.segments
        .iter()
        .map(|s| {
            if s.discontinuity {
                n += 1;
            }
            (s.uri.clone(), n)
        })
        .collect()
}

#[test]
fn discontinuity_sequence_counts_discontinuities_that_left_the_window() {
    let (mut server, media) = start(short_window_without_cleanup(), Fixture::Av8s);
    let key = "dseq1";
    let mut numbers: BTreeMap<String, u64> = BTreeMap::new();
    let mut record = |pl: &Playlist| {
        check_playlist(pl);
        for (uri, n) in discontinuity_numbers(pl) {
            if let Some(prev) = numbers.insert(uri.clone(), n) {
                assert_eq!(
                    prev, n,
                    "discontinuity number of {uri} changed: DISCONTINUITY-SEQUENCE not \
                     incremented when a DISCONTINUITY left the window?\n{pl:#?}"
                );
            }
        }
    };
    publish_watching(&server, key, media, &mut record);
    let first = wait_ended(&server.playlist_path(key));
    record(&first);
    publish_watching(&server, key, media, &mut record);
    let last = wait_playlist(
        &server.playlist_path(key),
        "ENDLIST after the republish",
        END_TIMEOUT,
        |p| p.end_list && p.media_sequence > first.next_sequence(),
    );
    record(&last);
    assert_eq!(
        last.discontinuity_sequence, 1,
        "the republish DISCONTINUITY has left the 2 s window:\n{last:#?}"
    );
    assert!(last.has_discontinuity_sequence_tag);
    assert_running(&mut server);
}
