//! The table of streams this server knows: live ones (a publisher is
//! connected; a second publisher on the key is refused) and idle ones whose
//! playlist history waits for a republish [hls_continuous] or for expiry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use rml_rtmp::sessions::StreamMetadata;
use tokio::sync::broadcast;

use crate::store::StreamHistory;
use crate::stream_key::StreamKey;

/// A message fanned out from a publisher to its RTMP players [allow_play].
#[derive(Debug, Clone)]
pub enum PlayPacket {
    Metadata(Arc<StreamMetadata>),
    Video {
        timestamp: u32,
        data: Bytes,
        keyframe: bool,
    },
    Audio {
        timestamp: u32,
        data: Bytes,
    },
    /// The publisher stopped.
    End,
}

/// What a player must receive before the live packets: the last metadata
/// and codec sequence headers.
#[derive(Debug, Clone, Default)]
pub struct StreamHeaders {
    pub metadata: Option<Arc<StreamMetadata>>,
    pub video: Option<(u32, Bytes)>,
    pub audio: Option<(u32, Bytes)>,
}

/// A stream with a connected publisher.
#[derive(Debug)]
pub struct LiveStream {
    pub key: StreamKey,
    pub started_at: SystemTime,
    packets: broadcast::Sender<PlayPacket>,
    headers: Mutex<StreamHeaders>,
}

/// Backlog per player before it is considered lagging and skips to the next
/// keyframe.
const PLAYER_BACKLOG: usize = 1024;

impl LiveStream {
    fn new(key: StreamKey) -> Self {
        let (packets, _) = broadcast::channel(PLAYER_BACKLOG);
        Self {
            key,
            started_at: SystemTime::now(),
            packets,
            headers: Mutex::new(StreamHeaders::default()),
        }
    }

    pub fn has_players(&self) -> bool {
        self.packets.receiver_count() > 0
    }

    /// Sends to players, if any; without players nothing is kept.
    pub fn send(&self, packet: PlayPacket) {
        if self.has_players() {
            let _ = self.packets.send(packet);
        }
    }

    pub fn headers(&self) -> MutexGuard<'_, StreamHeaders> {
        self.headers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new player: the headers to send first and the live packet feed.
    pub fn subscribe(&self) -> (StreamHeaders, broadcast::Receiver<PlayPacket>) {
        let headers = self.headers().clone();
        (headers, self.packets.subscribe())
    }
}

enum Slot {
    Live(Arc<LiveStream>),
    Idle {
        history: StreamHistory,
        since: Instant,
    },
}

/// Why a stream could not go live.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("stream {0} is already being published")]
    AlreadyLive(StreamKey),
    #[error("{0} streams are live, the maxPublishers limit")]
    TooManyPublishers(usize),
}

#[derive(Default)]
pub struct LiveStreams {
    slots: Mutex<HashMap<StreamKey, Slot>>,
}

impl LiveStreams {
    fn lock(&self) -> MutexGuard<'_, HashMap<StreamKey, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `key` live, if it is not already and fewer than `max_live`
    /// streams are; returns the history a previous publication left.
    pub fn claim(
        &self,
        key: &StreamKey,
        max_live: usize,
    ) -> Result<(Arc<LiveStream>, Option<StreamHistory>), ClaimError> {
        let mut slots = self.lock();
        if matches!(slots.get(key), Some(Slot::Live(_))) {
            return Err(ClaimError::AlreadyLive(key.clone()));
        }
        let live_count = slots
            .values()
            .filter(|s| matches!(s, Slot::Live(_)))
            .count();
        if live_count >= max_live {
            return Err(ClaimError::TooManyPublishers(live_count));
        }
        let live = Arc::new(LiveStream::new(key.clone()));
        match slots.insert(key.clone(), Slot::Live(live.clone())) {
            Some(Slot::Idle { history, .. }) => Ok((live, Some(history))),
            _ => Ok((live, None)),
        }
    }

    /// The publisher of `live` left; keep its history for a republish.
    pub fn release(&self, live: &Arc<LiveStream>, history: StreamHistory) {
        live.send(PlayPacket::End);
        let mut slots = self.lock();
        if matches!(slots.get(&live.key), Some(Slot::Live(l)) if Arc::ptr_eq(l, live)) {
            slots.insert(
                live.key.clone(),
                Slot::Idle {
                    history,
                    since: Instant::now(),
                },
            );
        }
    }

    /// History recovered from disk at start-up.
    pub fn insert_idle(&self, key: StreamKey, history: StreamHistory) {
        self.lock().entry(key).or_insert(Slot::Idle {
            history,
            since: Instant::now(),
        });
    }

    pub fn live(&self, key: &StreamKey) -> Option<Arc<LiveStream>> {
        match self.lock().get(key) {
            Some(Slot::Live(l)) => Some(l.clone()),
            _ => None,
        }
    }

    pub fn all_live(&self) -> Vec<Arc<LiveStream>> {
        let mut v: Vec<_> = self
            .lock()
            .values()
            .filter_map(|s| match s {
                Slot::Live(l) => Some(l.clone()),
                Slot::Idle { .. } => None,
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Forgets idle streams older than `ttl`, calling `remove_files` for each
    /// while the table is locked, so a new publisher on the same key cannot
    /// start writing before the old files are gone.
    pub fn expire(
        &self,
        now: Instant,
        ttl: Duration,
        mut remove_files: impl FnMut(&StreamKey, &StreamHistory),
    ) {
        let mut slots = self.lock();
        slots.retain(|key, slot| match slot {
            Slot::Idle { history, since } if now.duration_since(*since) >= ttl => {
                remove_files(key, history);
                false
            }
            _ => true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::PlaylistWindow;
    use oxcast_crds::PlaylistType;

    fn history() -> StreamHistory {
        StreamHistory {
            window: PlaylistWindow::new(PlaylistType::Live, 5),
            last_id: Some(7),
        }
    }

    #[test]
    fn second_publisher_is_refused_until_release() {
        let streams = LiveStreams::default();
        let key = StreamKey::parse("k").unwrap();
        let (first, prev) = streams.claim(&key, 10).unwrap();
        assert!(prev.is_none());
        assert_eq!(
            streams.claim(&key, 10).unwrap_err(),
            ClaimError::AlreadyLive(key.clone())
        );
        let other = StreamKey::parse("other").unwrap();
        assert_eq!(
            streams.claim(&other, 1).unwrap_err(),
            ClaimError::TooManyPublishers(1)
        );
        assert!(Arc::ptr_eq(&streams.live(&key).unwrap(), &first));
        streams.release(&first, history());
        assert!(streams.live(&key).is_none());
        let (_, prev) = streams.claim(&key, 10).unwrap();
        assert_eq!(prev.unwrap().last_id, Some(7));
    }

    #[test]
    fn expiry_removes_only_old_idle_streams() {
        let streams = LiveStreams::default();
        let a = StreamKey::parse("a").unwrap();
        let b = StreamKey::parse("b").unwrap();
        streams.insert_idle(a.clone(), history());
        let _live_b = streams.claim(&b, 10).unwrap();
        let mut removed = Vec::new();
        streams.expire(Instant::now(), Duration::from_secs(3600), |k, _| {
            removed.push(k.clone())
        });
        assert!(removed.is_empty());
        streams.expire(
            Instant::now() + Duration::from_secs(3601),
            Duration::from_secs(3600),
            |k, _| removed.push(k.clone()),
        );
        assert_eq!(removed, vec![a]);
        assert!(streams.live(&b).is_some());
    }
}
