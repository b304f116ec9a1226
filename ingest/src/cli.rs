//! The command line: roles as subcommands, and every config-file setting as
//! a flag that overrides the file. Defaults come from the `crds` types.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use oxcast_crds::{
    DatetimeMode, FragmentNaming, HlsSettings, HumanDuration, IngestConfig, KeyAuthMode,
    OwnershipMode, PlaylistType,
};
use serde::de::DeserializeOwned;

#[derive(Debug, Parser)]
#[command(
    name = "oxcast-ingest",
    version,
    about = "RTMP ingest → HLS server (all-in-one by default; `rtmp` or `http` for one role)",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Role>,
    #[command(flatten)]
    pub run: RunArgs,
}

// Parsed once at start; boxing the arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Role {
    /// RTMP ingest and HTTP serving in one process (the default).
    Run(RunArgs),
    /// RTMP ingest only: writes the HLS tree.
    Rtmp(RtmpRoleArgs),
    /// HTTP only: serves an HLS tree written by others.
    Http(HttpRoleArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Directory of the HLS tree.
    #[arg(long, default_value = "./live")]
    pub hls_root: PathBuf,
    /// YAML (or JSON) config file with `rtmp`, `hls` and `http` sections;
    /// flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log output format (logs go to stderr; filter with RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Encrypt segments with AES-128 (ingest) and serve their keys (HTTP)
    /// [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub hls_encryption: Option<bool>,
    /// Directory of the encryption keys, outside the HLS root (on the same
    /// volume when ingest and HTTP run apart) [default: `<hls-root>-keys`].
    #[arg(long)]
    pub hls_key_dir: Option<PathBuf>,
    /// URL path keys are served under and named by in playlists
    /// [default: /keys].
    #[arg(long)]
    pub hls_key_path: Option<String>,
}

impl CommonArgs {
    pub fn apply(&self, c: &mut IngestConfig) {
        if let Some(v) = self.hls_encryption {
            c.hls.encryption.enabled = v;
        }
        if let Some(p) = &self.hls_key_path {
            c.hls.encryption.key_path = p.clone();
        }
    }
}

#[derive(Debug, Args)]
pub struct RtmpArgs {
    /// RTMP listen address.
    #[arg(long, default_value = "0.0.0.0:1935")]
    pub rtmp_listen: SocketAddr,
    /// RTMP application name publishers use (`rtmp://host/<app>/<key>`) [default: app].
    #[arg(long)]
    pub app: Option<String>,
    /// Allow RTMP playback of live streams [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub allow_play: Option<bool>,
    /// RTMP worker threads (event loops; each serves its share of the
    /// connections) [default: one per core].
    #[arg(long, env = "OXCAST_RTMP_WORKERS")]
    pub rtmp_workers: Option<usize>,
    /// Per-stream limit of segment data waiting for a slow or stalled
    /// volume, e.g. `16MiB`; beyond it whole segments are dropped (logged,
    /// counted in oxcast_segments_dropped_total, the next one marked
    /// EXT-X-DISCONTINUITY) [default: 16MiB].
    #[arg(long, env = "OXCAST_STORAGE_BACKLOG", value_parser = parse_bytes)]
    pub storage_backlog: Option<u64>,
    #[command(flatten)]
    pub hls: HlsFlags,
    #[command(flatten)]
    pub ownership: OwnershipFlags,
}

/// A byte count: `1048576`, `512KiB`, `16MiB`, `1GiB` (also `K`/`M`/`G`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 16MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(scale)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{text:?} is not a usable size"))
}

/// The `ownership` section as flags, plus who this replica is.
#[derive(Debug, Args, Default)]
pub struct OwnershipFlags {
    /// inProcess | leases: how stream ownership is proven [default: inProcess].
    #[arg(long, value_parser = setting::<OwnershipMode>)]
    pub ownership: Option<OwnershipMode>,
    /// Lease name prefix, e.g. the LiveApplication's name [default: the app].
    #[arg(long)]
    pub lease_prefix: Option<String>,
    /// A replica whose heartbeat is this old is dead [default: 10s].
    #[arg(long)]
    pub lease_duration: Option<HumanDuration>,
    /// Heartbeat interval [default: 2s].
    #[arg(long)]
    pub lease_renew_interval: Option<HumanDuration>,
    /// Namespace of the Leases [default: the client's, i.e. the pod's].
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in Leases [default: the host name].
    #[arg(long, env = "POD_NAME")]
    pub replica_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// HTTP listen address.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,
    /// URL path the HLS tree is served under [default: /live].
    #[arg(long)]
    pub http_path_prefix: Option<String>,
    /// Access-Control-Allow-Origin: `*`, comma-separated origins, or `` for
    /// no CORS [default: *].
    #[arg(long)]
    pub http_cors_origin: Option<String>,
    /// Memory cache for served playlists and segments, in MiB; 0 = off
    /// [default: 64].
    #[arg(long)]
    pub http_cache_size_mib: Option<u32>,
    /// Directory with the player's hls.js bundle (built in `player/` by
    /// `npm ci && npm run build`); without it the page at `/` uses the
    /// browser's native HLS.
    #[arg(long, env = "OXCAST_PLAYER_ASSETS", default_value = "player/dist")]
    pub player_assets: PathBuf,
    /// Who may fetch keys: signed | webhook | public [default: signed].
    #[arg(long, value_parser = setting::<KeyAuthMode>)]
    pub hls_key_auth: Option<KeyAuthMode>,
    /// File with the HMAC secret for signed key tokens.
    #[arg(long)]
    pub hls_key_secret_file: Option<String>,
    /// File with the previous HMAC secret, accepted for a grace period.
    #[arg(long)]
    pub hls_key_previous_secret_file: Option<String>,
    /// How long the previous secret stays valid after it was written
    /// [default: 1h].
    #[arg(long)]
    pub hls_key_previous_secret_grace: Option<HumanDuration>,
    /// Cookie holding the viewer id that viewer-bound tokens must match
    /// (signed mode) [default: oxcast_viewer].
    #[arg(long)]
    pub hls_key_viewer_cookie: Option<String>,
    /// URL asked whether a viewer may have a key (webhook mode).
    #[arg(long)]
    pub hls_key_webhook_url: Option<String>,
    /// Webhook answer deadline [default: 2s].
    #[arg(long)]
    pub hls_key_webhook_timeout: Option<HumanDuration>,
    /// How long a webhook decision is reused per viewer and stream
    /// [default: 5s].
    #[arg(long)]
    pub hls_key_webhook_cache: Option<HumanDuration>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rtmp: RtmpArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, Args)]
pub struct RtmpRoleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub rtmp: RtmpArgs,
    /// Address for `/healthz`, `/readyz` and `/metrics` (none by default).
    #[arg(long)]
    pub ops_listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct HttpRoleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// Parses a flag value the way the config file spells it (`system`, `live`…).
fn setting<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|e| e.to_string())
}

/// The `hls` section as flags (`--hls-<name>`); unset flags keep the file's value.
#[derive(Debug, Args, Default)]
pub struct HlsFlags {
    /// Target segment length, e.g. 2s [default: 5s].
    #[arg(long)]
    pub hls_fragment: Option<HumanDuration>,
    /// Cut segments at this length even between keyframes (bounded latency;
    /// a segment cut there starts mid-GOP) [default: unset, cut only on
    /// keyframes].
    #[arg(long)]
    pub hls_max_fragment: Option<HumanDuration>,
    /// Media listed in the live playlist [default: 30s].
    #[arg(long)]
    pub hls_playlist_length: Option<HumanDuration>,
    /// One directory per stream [default: true].
    #[arg(long)]
    pub hls_nested: Option<bool>,
    /// system | sequential | timestamp [default: system].
    #[arg(long, value_parser = setting::<FragmentNaming>)]
    pub hls_fragment_naming: Option<FragmentNaming>,
    /// Round segment ids down to a multiple of this [default: 0 = off].
    #[arg(long)]
    pub hls_fragment_naming_granularity: Option<u64>,
    /// system | none [default: system].
    #[arg(long, value_parser = setting::<DatetimeMode>)]
    pub hls_datetime: Option<DatetimeMode>,
    /// Continue sequence and ids across republish and restart [default: true].
    #[arg(long)]
    pub hls_continuous: Option<bool>,
    /// Delete old segments and ended streams [default: true].
    #[arg(long)]
    pub hls_cleanup: Option<bool>,
    /// Write EXT-X-ENDLIST when the publisher stops [default: true].
    #[arg(long)]
    pub hls_end_list: Option<bool>,
    /// live | event [default: live].
    #[arg(long, value_parser = setting::<PlaylistType>)]
    pub hls_type: Option<PlaylistType>,
    /// Prefix for segment URIs in playlists [default: empty].
    #[arg(long)]
    pub hls_base_url: Option<String>,
    /// A new key every this many segments; 0 = one per publish [default: 6].
    #[arg(long)]
    pub hls_fragments_per_key: Option<u32>,
}

impl HlsFlags {
    pub fn apply(self, s: &mut HlsSettings) {
        if let Some(v) = self.hls_fragment {
            s.fragment = v;
        }
        if let Some(v) = self.hls_max_fragment {
            s.max_fragment = Some(v);
        }
        if let Some(v) = self.hls_playlist_length {
            s.playlist_length = v;
        }
        if let Some(v) = self.hls_nested {
            s.nested = v;
        }
        if let Some(v) = self.hls_fragment_naming {
            s.fragment_naming = v;
        }
        if let Some(v) = self.hls_fragment_naming_granularity {
            s.fragment_naming_granularity = v;
        }
        if let Some(v) = self.hls_datetime {
            s.datetime = v;
        }
        if let Some(v) = self.hls_continuous {
            s.continuous = v;
        }
        if let Some(v) = self.hls_cleanup {
            s.cleanup = v;
        }
        if let Some(v) = self.hls_end_list {
            s.end_list = v;
        }
        if let Some(v) = self.hls_type {
            s.playlist_type = v;
        }
        if let Some(v) = self.hls_base_url {
            s.base_url = v;
        }
        if let Some(v) = self.hls_fragments_per_key {
            s.encryption.fragments_per_key = v;
        }
    }
}

impl RtmpArgs {
    pub fn apply(self, c: &mut IngestConfig) {
        if let Some(app) = self.app {
            c.rtmp.app = app;
        }
        if let Some(allow) = self.allow_play {
            c.rtmp.allow_play = allow;
        }
        self.hls.apply(&mut c.hls);
        let o = self.ownership;
        if let Some(v) = o.ownership {
            c.ownership.mode = v;
        }
        if let Some(v) = o.lease_prefix {
            c.ownership.lease_prefix = Some(v);
        }
        if let Some(v) = o.lease_duration {
            c.ownership.lease_duration = v;
        }
        if let Some(v) = o.lease_renew_interval {
            c.ownership.renew_interval = v;
        }
    }
}

impl HttpArgs {
    pub fn apply(&self, c: &mut IngestConfig) {
        if let Some(prefix) = &self.http_path_prefix {
            c.http.path_prefix = prefix.clone();
        }
        if let Some(origin) = &self.http_cors_origin {
            c.http.cors_allow_origin = origin.clone();
        }
        if let Some(mib) = self.http_cache_size_mib {
            c.http.cache_size_mib = mib;
        }
        let a = &mut c.hls.encryption.authorization;
        if let Some(v) = self.hls_key_auth {
            a.mode = v;
        }
        if let Some(v) = &self.hls_key_secret_file {
            a.secret_file = Some(v.clone());
        }
        if let Some(v) = &self.hls_key_previous_secret_file {
            a.previous_secret_file = Some(v.clone());
        }
        if let Some(v) = self.hls_key_previous_secret_grace {
            a.previous_secret_grace = v;
        }
        if let Some(v) = &self.hls_key_viewer_cookie {
            a.viewer_cookie = v.clone();
        }
        if let Some(v) = &self.hls_key_webhook_url {
            a.webhook_url = Some(v.clone());
        }
        if let Some(v) = self.hls_key_webhook_timeout {
            a.webhook_timeout = v;
        }
        if let Some(v) = self.hls_key_webhook_cache {
            a.webhook_cache = v;
        }
    }
}

/// Config-file problems, reported with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
}

pub fn load_config(path: Option<&Path>) -> Result<IngestConfig, ConfigFileError> {
    let Some(path) = path else {
        return Ok(IngestConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|source| ConfigFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// `addr` as a host:port people can paste: a wildcard listen address is
/// shown as loopback; port 0 (picked at bind time, printed on the
/// `listening` line) as `PORT`.
fn reachable(addr: SocketAddr) -> String {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    if a.port() == 0 {
        return match a {
            SocketAddr::V4(v4) => format!("{}:PORT", v4.ip()),
            SocketAddr::V6(v6) => format!("[{}]:PORT", v6.ip()),
        };
    }
    a.to_string()
}

/// What the server tells a person on start, in plain words: where to
/// publish, where to watch, and what is missing for browsers to play.
pub fn start_banner(
    rtmp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    config: &IngestConfig,
    player_assets: Option<&Path>,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let example = "mystream";
    if let Some(addr) = rtmp {
        let server = format!("rtmp://{}/{}", reachable(addr), config.rtmp.app);
        let _ = writeln!(
            s,
            "Publish to:  {server}/<stream key>   e.g. {server}/{example}"
        );
        let _ = writeln!(
            s,
            "  OBS: Settings → Stream → Service \"Custom...\", Server {server}, Stream Key {example}"
        );
        let _ = writeln!(
            s,
            "  Set the encoder's keyframe interval to {} (hls.fragment) so segments are that long.",
            config.hls.fragment
        );
    }
    if let Some(addr) = http {
        let base = format!("http://{}", reachable(addr));
        let prefix = config.http.path_prefix.trim_end_matches('/');
        let playlist = if config.hls.nested {
            format!("{example}/index.m3u8")
        } else {
            format!("{example}.m3u8")
        };
        let _ = writeln!(
            s,
            "Watch at:    {base}/   (player page, lists live streams)"
        );
        let _ = writeln!(s, "  HLS:       {base}{prefix}/{playlist}");
        let has_hlsjs = player_assets.is_some_and(|dir| dir.join("hls.min.js").is_file());
        if !has_hlsjs {
            let dir =
                player_assets.map_or_else(|| "player/dist".into(), |d| d.display().to_string());
            let _ = writeln!(
                s,
                "  No hls.js in {dir}: only Safari can play on the player page. For Chrome and \
                 Firefox run `cd player && npm ci && npm run build` in the oxcast source \
                 directory, then restart."
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("oxcast-ingest").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn no_subcommand_is_all_in_one_with_reference_defaults() {
        let cli = parse(&[]);
        assert!(cli.command.is_none());
        assert_eq!(cli.run.rtmp.rtmp_listen.to_string(), "0.0.0.0:1935");
        assert_eq!(cli.run.http.http_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cli.run.common.hls_root, PathBuf::from("./live"));
        let mut c = IngestConfig::default();
        cli.run.rtmp.apply(&mut c);
        assert_eq!(c, IngestConfig::default());
    }

    #[test]
    fn hls_flags_override_the_file() {
        let cli = parse(&[
            "run",
            "--hls-fragment",
            "2s",
            "--hls-nested",
            "false",
            "--hls-fragment-naming",
            "sequential",
            "--hls-type",
            "event",
            "--allow-play",
            "--app",
            "live",
        ]);
        let Some(Role::Run(run)) = cli.command else {
            panic!("expected run")
        };
        let mut c: IngestConfig =
            serde_yaml::from_str("hls:\n  fragment: 4s\n  playlistLength: 20s\n").unwrap();
        run.rtmp.apply(&mut c);
        assert_eq!(c.hls.fragment, HumanDuration::from_secs(2));
        assert_eq!(c.hls.playlist_length, HumanDuration::from_secs(20));
        assert!(!c.hls.nested);
        assert_eq!(c.hls.fragment_naming, FragmentNaming::Sequential);
        assert_eq!(c.hls.playlist_type, PlaylistType::Event);
        assert!(c.rtmp.allow_play);
        assert_eq!(c.rtmp.app, "live");
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["--hls-fragment", "5"][..],
            &["--hls-fragment-naming", "random"],
            &["--hls-nested", "maybe"],
            &["--rtmp-listen", "nowhere"],
        ] {
            let r =
                Cli::try_parse_from(std::iter::once("oxcast-ingest").chain(args.iter().copied()));
            assert!(r.is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn http_flags_override_the_file() {
        let cli = parse(&[
            "http",
            "--http-cors-origin",
            "https://a.example",
            "--http-cache-size-mib",
            "8",
            "--player-assets",
            "/srv/player",
        ]);
        let Some(Role::Http(http)) = cli.command else {
            panic!("expected http")
        };
        assert_eq!(http.http.player_assets, PathBuf::from("/srv/player"));
        let mut c: IngestConfig =
            serde_yaml::from_str("http:\n  corsAllowOrigin: ''\n  cacheSizeMib: 1\n").unwrap();
        http.http.apply(&mut c);
        assert_eq!(c.http.cors_allow_origin, "https://a.example");
        assert_eq!(c.http.cache_size_mib, 8);
        // Unset flags keep the file's values.
        let cli = parse(&["http"]);
        let Some(Role::Http(http)) = cli.command else {
            panic!("expected http")
        };
        let mut c: IngestConfig = serde_yaml::from_str("http:\n  corsAllowOrigin: ''\n").unwrap();
        http.http.apply(&mut c);
        assert_eq!(c.http.cors_allow_origin, "");
        assert_eq!(c.http.cache_size_mib, 64);
    }

    #[test]
    fn encryption_flags_override_the_file() {
        let cli = parse(&[
            "run",
            "--hls-encryption",
            "--hls-fragments-per-key",
            "3",
            "--hls-key-dir",
            "/srv/keys",
            "--hls-key-path",
            "/drm",
            "--hls-key-auth",
            "webhook",
            "--hls-key-webhook-url",
            "http://127.0.0.1:9/auth",
        ]);
        let Some(Role::Run(run)) = cli.command else {
            panic!("expected run")
        };
        let mut c = IngestConfig::default();
        assert!(!c.hls.encryption.enabled, "off by default");
        run.common.apply(&mut c);
        run.rtmp.apply(&mut c);
        run.http.apply(&mut c);
        assert_eq!(run.common.hls_key_dir, Some(PathBuf::from("/srv/keys")));
        let e = &c.hls.encryption;
        assert!(e.enabled);
        assert_eq!(e.fragments_per_key, 3);
        assert_eq!(e.key_path, "/drm");
        assert_eq!(e.authorization.mode, KeyAuthMode::Webhook);
        assert!(c.validate().is_ok());
        // The HTTP role alone takes the delivery flags.
        let cli = parse(&[
            "http",
            "--hls-key-auth",
            "signed",
            "--hls-key-secret-file",
            "/s",
        ]);
        let Some(Role::Http(http)) = cli.command else {
            panic!("expected http")
        };
        let mut c = IngestConfig::default();
        http.http.apply(&mut c);
        assert_eq!(
            c.hls.encryption.authorization.secret_file.as_deref(),
            Some("/s")
        );
    }

    #[test]
    fn http_role_takes_no_rtmp_flags() {
        assert!(
            Cli::try_parse_from(["oxcast-ingest", "http", "--rtmp-listen", "0.0.0.0:1"]).is_err()
        );
        let cli = parse(&["http", "--hls-root", "/srv", "--http-listen", "127.0.0.1:0"]);
        assert!(matches!(cli.command, Some(Role::Http(_))));
    }

    #[test]
    fn start_banner_says_where_to_publish_and_watch() {
        let c = IngestConfig::default();
        let text = start_banner(
            Some("0.0.0.0:1935".parse().unwrap()),
            Some("0.0.0.0:8080".parse().unwrap()),
            &c,
            Some(Path::new("/nonexistent")),
        );
        let app = &c.rtmp.app;
        assert!(
            text.contains(&format!(
                "Publish to:  rtmp://127.0.0.1:1935/{app}/<stream key>"
            )),
            "{text}"
        );
        assert!(
            text.contains("Watch at:    http://127.0.0.1:8080/ "),
            "{text}"
        );
        assert!(
            text.contains("http://127.0.0.1:8080/live/mystream/index.m3u8"),
            "{text}"
        );
        assert!(
            text.contains("cd player && npm ci && npm run build"),
            "{text}"
        );
        let ephemeral = start_banner(Some("127.0.0.1:0".parse().unwrap()), None, &c, None);
        assert!(ephemeral.contains("rtmp://127.0.0.1:PORT/"), "{ephemeral}");
        let rtmp_only = start_banner(Some("10.0.0.1:1935".parse().unwrap()), None, &c, None);
        assert!(rtmp_only.contains("rtmp://10.0.0.1:1935/"), "{rtmp_only}");
        assert!(!rtmp_only.contains("Watch"), "{rtmp_only}");
    }
}
