#!/usr/bin/env python3
"""Builds the seed corpora for the fuzz targets from real ffmpeg output.

rtmp_input: the bytes ffmpeg sends when it publishes to a running
oxcast-ingest, captured by a relay in front of the server (prefixed with the
two control bytes the target reads: read size, and 0 = "do the handshake");
and one capture without its handshake (control byte 1: the target feeds a
canned one), so that a fuzz run bounded to a few KiB per input (-max_len)
spends them on the session: connect, publish, sequence headers, frames.

flv_to_hls: the audio/video tags of a short ffmpeg-made FLV file, in the
target's record format [kind, ts(4), len(2), tag body].

sps: H.264 sequence parameter sets (with their NAL header byte) from libx264
at several profiles and picture sizes, cropped and not.

playlist: the media playlist the server wrote for each captured publish,
plus hand-written ones for the tags a stream gets later in its life
(discontinuities, the sequence numbers of a slid window, EVENT, ENDLIST).

Usage: make_seeds.py OXCAST_INGEST_BINARY  (needs ffmpeg on PATH)
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LIMIT = 48 * 1024
# C0 (version) + C1 + C2: what the client sends before the session.
HANDSHAKE = 1 + 1536 + 1536


def make_flv(path, extra):
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=15",
         "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=44100", "-t", "2",
         "-c:v", "libx264", "-g", "15", "-bf", "2", "-b:v", "100k", "-c:a", "aac", "-b:a", "32k",
         *extra, "-f", "flv", path],
        check=True,
    )


def flv_records(path):
    data = open(path, "rb").read()
    pos = struct.unpack(">I", data[5:9])[0] + 4
    out = bytearray()
    while pos + 11 <= len(data) and len(out) < LIMIT:
        kind, size = data[pos], int.from_bytes(data[pos + 1:pos + 4], "big")
        ts = int.from_bytes(data[pos + 4:pos + 7], "big") | (data[pos + 7] << 24)
        body = data[pos + 11:pos + 11 + size]
        if kind in (8, 9):
            out += bytes([1 if kind == 8 else 0]) + struct.pack(">IH", ts, len(body)) + body
        pos += 11 + size + 4
    return bytes(out)


def make_sps(size, profile):
    annexb = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-frames:v", "1",
         "-c:v", "libx264", "-profile:v", profile, "-pix_fmt", "yuv420p", "-f", "h264", "-"],
        check=True, capture_output=True,
    ).stdout
    for nal in annexb.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01"):
        if nal and nal[0] & 0x1F == 7:
            return nal.rstrip(b"\x00")
    raise SystemExit(f"no SPS in the {size} {profile} encode")


HAND_WRITTEN_PLAYLISTS = {
    "playlist/slid-window-discontinuity": """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:1041
#EXT-X-DISCONTINUITY-SEQUENCE:3
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-PROGRAM-DATE-TIME:2026-11-24T07:30:00.123+00:00
#EXTINF:2.000,
https://cdn.example/live/cam/1041.ts
#EXT-X-DISCONTINUITY
#EXT-X-PROGRAM-DATE-TIME:2026-11-24T07:31:10.000+00:00
#EXTINF:3.967,
https://cdn.example/live/cam/1042.ts
""",
    "playlist/event-ended-timestamp-names": """#EXTM3U
#EXT-X-VERSION:3
#EXT-X-TARGETDURATION:2
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-PLAYLIST-TYPE:EVENT
#EXTINF:2.002,
cam-1764574200123.ts
#EXTINF:1.501,
cam-1764574202125.ts
#EXT-X-ENDLIST
""",
}


def capture_playlist(root):
    """The ended playlist of the publish (polled: it is written when the
    server has seen the publisher leave)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for directory, _, files in os.walk(root):
            for name in files:
                if name.endswith(".m3u8"):
                    text = open(os.path.join(directory, name), "rb").read()
                    if b"#EXT-X-ENDLIST" in text:
                        return text
        time.sleep(0.1)
    raise SystemExit("the server wrote no ended playlist")


def capture_publish(binary, flv, playlists=None):
    with tempfile.TemporaryDirectory() as root:
        server = subprocess.Popen([binary, "rtmp", "--rtmp-listen", "127.0.0.1:0", "--hls-root", root],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = server.stdout.readline().split()
        host, port = line[2].rsplit(":", 1)
        relay = socket.socket()
        relay.bind(("127.0.0.1", 0))
        relay.listen(1)
        captured = bytearray()

        def pump():
            client, _ = relay.accept()
            upstream = socket.create_connection((host, int(port)))

            def back():
                try:
                    while (chunk := upstream.recv(65536)):
                        client.sendall(chunk)
                except OSError:
                    pass
            threading.Thread(target=back, daemon=True).start()
            while (chunk := client.recv(65536)):
                captured.extend(chunk)
                upstream.sendall(chunk)
            upstream.close()

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        subprocess.run(["ffmpeg", "-v", "error", "-i", flv, "-c", "copy", "-f", "flv",
                        f"rtmp://127.0.0.1:{relay.getsockname()[1]}/app/seed"], check=True)
        t.join(timeout=10)
        if playlists is not None:
            playlists.append(capture_playlist(root))
        server.terminate()
        server.wait()
        return bytes(captured[:LIMIT])


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, "plain.flv")
        mono = os.path.join(tmp, "mono.flv")
        make_flv(plain, [])
        make_flv(mono, ["-ac", "1", "-ar", "22050"])
        playlists = []
        publish = capture_publish(binary, plain, playlists)
        seeds = {
            "rtmp_input/ffmpeg-publish": bytes([64, 0]) + publish,
            "rtmp_input/ffmpeg-publish-after-handshake": bytes([64, 1]) + publish[HANDSHAKE:],
            "rtmp_input/ffmpeg-publish-small-reads": bytes([1, 0]) + capture_publish(binary, mono, playlists),
            "flv_to_hls/ffmpeg-h264-aac": flv_records(plain),
            "flv_to_hls/ffmpeg-mono-22k": flv_records(mono),
            "sps/ffmpeg-high-160x90": make_sps("160x90", "high"),
            "sps/ffmpeg-baseline-1918x1080": make_sps("1918x1080", "baseline"),
            "sps/ffmpeg-main-1280x720": make_sps("1280x720", "main"),
            "playlist/ffmpeg-publish": playlists[0],
            "playlist/ffmpeg-publish-small-reads": playlists[1],
        }
        seeds.update({k: v.encode() for k, v in HAND_WRITTEN_PLAYLISTS.items()})
    for name, data in seeds.items():
        path = os.path.join(HERE, "corpus", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        print(f"{path}: {len(data)} bytes")


if __name__ == "__main__":
    main()
