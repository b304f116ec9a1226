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

/// Refused: the key already has a publisher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream {0} is already being published")]
pub struct AlreadyLive(pub StreamKey);

#[derive(Default)]
pub struct LiveStreams {
    slots: Mutex<HashMap<StreamKey, Slot>>,
}

impl LiveStreams {
    fn lock(&self) -> MutexGuard<'_, HashMap<StreamKey, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `key` live; returns the history a previous publication left.
    pub fn claim(
        &self,
        key: &StreamKey,
    ) -> Result<(Arc<LiveStream>, Option<StreamHistory>), AlreadyLive> {
        let mut slots = self.lock();
        let live = Arc::new(LiveStream::new(key.clone()));
        match slots.insert(key.clone(), Slot::Live(live.clone())) {
            Some(Slot::Live(existing)) => {
                slots.insert(key.clone(), Slot::Live(existing));
                Err(AlreadyLive(key.clone()))
            }
            Some(Slot::Idle { history, .. }) => Ok((live, Some(history))),
            None => Ok((live, None)),
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
        let (first, prev) = streams.claim(&key).unwrap();
        assert!(prev.is_none());
        assert_eq!(streams.claim(&key).unwrap_err(), AlreadyLive(key.clone()));
        assert!(Arc::ptr_eq(&streams.live(&key).unwrap(), &first));
        streams.release(&first, history());
        assert!(streams.live(&key).is_none());
        let (_, prev) = streams.claim(&key).unwrap();
        assert_eq!(prev.unwrap().last_id, Some(7));
    }

    #[test]
    fn expiry_removes_only_old_idle_streams() {
        let streams = LiveStreams::default();
        let a = StreamKey::parse("a").unwrap();
        let b = StreamKey::parse("b").unwrap();
        streams.insert_idle(a.clone(), history());
        let _live_b = streams.claim(&b).unwrap();
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
