// oxcast player page: lists live streams from /api/streams and plays the
// selected one with hls.js (served from the player assets directory) or,
// without it, with the browser's native HLS support (Safari, iOS).
//
// State useful to tests and to people debugging a stream is kept on
// window.oxcastPlayer.
"use strict";

(function () {
  const POLL_MS = 3000;

  const state = {
    engine: null, // "hls.js" | "native" | null
    current: null, // name of the selected stream
    streams: [],
    errors: [], // every hls.js error event, as {type, details, fatal}
    fatalErrors: [], // the fatal ones
  };
  window.oxcastPlayer = state;

  const $ = (id) => document.getElementById(id);
  const video = $("video");
  let hls = null;
  let playingUrl = null;

  // Encrypted streams (hls.encryption, mode signed): the website links to
  // this page as /?token=<token>#<stream>. The token goes on the playlist
  // URL only; the server carries it onto the key URIs of the playlist.
  const token = new URLSearchParams(location.search).get("token");

  function playlistSource(url) {
    if (!token) return url;
    const u = new URL(url, location.href);
    u.searchParams.set("token", token);
    return u.toString();
  }

  function formatBitrate(bps) {
    if (bps == null) return null;
    if (bps >= 1e6) return (bps / 1e6).toFixed(2) + " Mb/s";
    return Math.round(bps / 1e3) + " kb/s";
  }

  function formatSince(iso) {
    if (!iso) return null;
    const started = new Date(iso);
    const secs = Math.max(0, Math.round((Date.now() - started.getTime()) / 1000));
    const h = Math.floor(secs / 3600);
    const m = Math.floor((secs % 3600) / 60);
    const s = secs % 60;
    const ago = h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
    return `${started.toLocaleTimeString()} (${ago} ago)`;
  }

  function summary(s) {
    return [
      s.resolution,
      s.frameRate != null ? `${s.frameRate} fps` : null,
      formatBitrate(s.bitrate),
    ]
      .filter(Boolean)
      .join(" · ");
  }

  function renderList() {
    const list = $("streams");
    list.replaceChildren();
    for (const s of state.streams) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.stream = s.name;
      button.setAttribute("aria-pressed", String(s.name === state.current));
      const name = document.createElement("div");
      name.className = "name";
      name.textContent = s.name;
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = s.playlistReady ? summary(s) || "live" : "starting…";
      button.append(name, meta);
      button.addEventListener("click", () => select(s.name));
      li.append(button);
      list.append(li);
    }
    $("empty").hidden = state.streams.length > 0;
  }

  function renderDetails() {
    const s = state.streams.find((x) => x.name === state.current);
    $("title").textContent = state.current ?? "Select a stream";
    const dl = $("details");
    dl.replaceChildren();
    if (!s) return;
    const rows = [
      ["Started", formatSince(s.startedAt)],
      ["Codecs", s.codecs],
      ["Resolution", s.resolution],
      ["Frame rate", s.frameRate != null ? `${s.frameRate} fps` : null],
      ["Bitrate", formatBitrate(s.bitrate)],
      [
        "Keyframe interval",
        s.keyframeInterval != null ? `${s.keyframeInterval} s` : null,
      ],
      ["Playlist", s.playlistUrl],
    ];
    for (const [k, v] of rows) {
      if (v == null) continue;
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v;
      dl.append(dt, dd);
    }
  }

  function message(text) {
    $("message").textContent = text || "";
  }

  // What to do when the server has no hls.js: said on the page, never a
  // silent black video.
  const NO_HLSJS =
    "This server has no hls.js, so only browsers with built-in HLS " +
    "(Safari) can play here. To play in Chrome and Firefox, run this in " +
    "the oxcast source directory (needs Node.js), then restart " +
    "oxcast-ingest and reload this page:  cd player && npm ci && npm run build";

  function stop() {
    if (hls) {
      hls.destroy();
      hls = null;
    }
    video.removeAttribute("src");
    video.load();
    playingUrl = null;
  }

  function onHlsError(_event, data) {
    const entry = { type: data.type, details: data.details, fatal: !!data.fatal };
    state.errors.push(entry);
    if (!data.fatal) return;
    state.fatalErrors.push(entry);
    message(`Playback error: ${data.details}`);
    // Recover the way hls.js recommends: reload on network errors, reset
    // the media pipeline on media errors, otherwise start over.
    if (data.type === window.Hls.ErrorTypes.NETWORK_ERROR) {
      setTimeout(() => hls && hls.startLoad(), 1000);
    } else if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR) {
      hls.recoverMediaError();
    } else {
      const url = playingUrl;
      stop();
      setTimeout(() => url && start(url), 2000);
    }
  }

  function start(url) {
    if (playingUrl === url) return;
    stop();
    playingUrl = url;
    message("");
    if (window.Hls && window.Hls.isSupported()) {
      state.engine = "hls.js";
      hls = new window.Hls({ lowLatencyMode: false });
      hls.on(window.Hls.Events.ERROR, onHlsError);
      hls.loadSource(url);
      hls.attachMedia(video);
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      // Some browsers claim native HLS and still show nothing: say what
      // fixes it up front.
      state.engine = "native";
      message(NO_HLSJS);
      video.src = url;
    } else {
      state.engine = null;
      message(NO_HLSJS);
      return;
    }
    $("engine").textContent = `playback: ${state.engine}`;
    video.play().catch(() => {
      // Autoplay may be refused until the user interacts; the controls work.
    });
  }

  function select(name) {
    state.current = name;
    if (location.hash !== `#${encodeURIComponent(name)}`) {
      history.replaceState(null, "", `#${encodeURIComponent(name)}`);
    }
    update();
  }

  // Starts (or keeps) playback of the selected stream once its playlist
  // exists; picks the first stream when nothing is selected.
  function update() {
    if (!state.current && state.streams.length) {
      state.current = state.streams[0].name;
    }
    renderList();
    renderDetails();
    const s = state.streams.find((x) => x.name === state.current);
    if (!s) {
      if (state.current && playingUrl) message("The stream has ended.");
      return;
    }
    if (!s.playlistReady) {
      message("Waiting for the first segment…");
      return;
    }
    start(playlistSource(s.playlistUrl));
  }

  async function poll() {
    try {
      const res = await fetch("/api/streams", { cache: "no-store" });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const body = await res.json();
      state.streams = body.streams || [];
      $("api-error").hidden = true;
      update();
    } catch (e) {
      $("api-error").textContent = `Cannot list streams: ${e.message}`;
      $("api-error").hidden = false;
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  const fromHash = decodeURIComponent(location.hash.slice(1));
  if (fromHash) state.current = fromHash;
  $("engine").textContent = window.Hls
    ? `hls.js ${window.Hls.version}`
    : "native HLS (no hls.js bundle)";
  poll();
})();
