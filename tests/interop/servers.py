"""One definition per interop server: its packages, its config per mode, its command, its version.

Every server listens on 127.0.0.1 only, on an ephemeral port, with TLS (the trustme certificate)
and ALPN h2, and serves ``Site.docroot``. Mode ``default`` is the server's own defaults with just
enough config to serve files over TLS; mode ``stingy`` makes it as stingy as it allows: 1-2
concurrent streams, small initial windows, small or padded DATA frames, GOAWAY every few requests.
What a server cannot do is said in its ``stingy`` text (printed under the matrix) and in comments.

The stingy windows are the server's *receive* windows (SETTINGS_INITIAL_WINDOW_SIZE and the
connection window): they bound what a client may upload. The client only sends HEADERS, so they
test that we read those settings, not our downloads; the download windows are the client's own.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from interop.procs import LOOPBACK, Launch, Tls, free_port

Mode = Literal["default", "stingy"]
MODES: tuple[Mode, ...] = ("default", "stingy")
HERE = Path(__file__).resolve().parent

GOAWAY_EVERY = 3  # requests per connection, where the server counts them
STINGY_STREAMS = 2
STINGY_WINDOW = 16384
STINGY_CHUNK = 4096  # bytes per write, where the server writes DATA as the app writes


@dataclass
class Site:
    """One server instance: its own folder (config, logs, pid files), the files, the TLS files."""

    workdir: Path
    docroot: Path
    tls: Tls
    mode: Mode
    build_dir: Path  # shared by a matrix run: compiled helpers (the Go server)
    port: int = 0
    aux_port: int = 0  # a backend's port (haproxy)

    @property
    def stingy(self) -> bool:
        return self.mode == "stingy"

    def path(self, name: str) -> Path:
        return self.workdir / name

    def write(self, name: str, text: str) -> Path:
        path = self.workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path


def _first_line(argv: Sequence[str], pattern: str = r"(.+)") -> str:
    """The first match of ``pattern`` in a command's output (stdout and stderr), or '?'."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    match = re.search(pattern, result.stdout + result.stderr)
    return match.group(1).strip() if match else "?"


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin"):  # not on every PATH
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _exe(name: str) -> str:
    path = _which(name)
    if path is None:
        raise FileNotFoundError(name)
    return path


class Server:
    """The interface: subclasses fill in the class attributes and ``launches``."""

    name: ClassVar[str]
    packages: ClassVar[tuple[str, ...]] = ()  # Debian packages
    pip_packages: ClassVar[tuple[str, ...]] = ()  # PyPI packages, in this interpreter
    binaries: ClassVar[tuple[str, ...]] = ()  # what must exist (a name on PATH or a path)
    light: ClassVar[bool] = False  # cheap enough for CI
    goaway: ClassVar[bool] = False  # stingy sends GOAWAY every few requests
    stingy: ClassVar[str] = ""  # what "stingy" means for this server, for the report
    ready_timeout: ClassVar[float] = 30.0

    def missing(self) -> list[str]:
        out = []
        for binary in self.binaries:
            if binary.startswith("/"):
                if not Path(binary).exists():
                    out.append(binary)
            elif _which(binary) is None:
                out.append(binary)
        out.extend(p for p in self.pip_packages if importlib.util.find_spec(p) is None)
        return out

    def version(self) -> str:
        raise NotImplementedError

    def prepare(self, build_dir: Path) -> None:
        """Build what the server needs (a compiled helper) into ``build_dir``; ``launches``
        calls it when needed."""

    def launches(self, site: Site) -> list[Launch]:
        """Write the config for ``site.mode`` under ``site.workdir``; what to start, in order."""
        raise NotImplementedError

    def launch(
        self,
        site: Site,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Launch:
        return Launch(
            self.name, argv, site.port, env=env, cwd=cwd, ready_timeout=self.ready_timeout
        )


# --------------------------------------------------------------------------------- nghttpd


class Nghttpd(Server):
    name = "nghttpd"
    packages = ("nghttp2-server",)
    binaries = ("nghttpd",)
    light = True
    stingy = (
        f"--max-concurrent-streams={STINGY_STREAMS}, --window-bits=14 and "
        "--connection-window-bits=14 (16383-byte receive windows), --padding=255 (frames "
        "padded by up to 255 bytes where the frame size leaves room: the short ones, not the "
        "full 16 KiB ones). nghttpd has no option for a request limit per connection (no "
        "GOAWAY) nor for smaller DATA frames."
    )

    def version(self) -> str:
        return _first_line([_exe("nghttpd"), "--version"], r"nghttpd (?:nghttp2/)?(\S+)")

    def launches(self, site: Site) -> list[Launch]:
        argv = [_exe("nghttpd"), f"--address={LOOPBACK}", f"--htdocs={site.docroot}"]
        if site.stingy:
            argv += [
                f"--max-concurrent-streams={STINGY_STREAMS}",
                "--window-bits=14",
                "--connection-window-bits=14",
                "--padding=255",
            ]
        argv += [str(site.port), str(site.tls.key_pem), str(site.tls.cert_pem)]
        return [self.launch(site, argv)]


# ----------------------------------------------------------------------------------- nginx


class Nginx(Server):
    name = "nginx"
    packages = ("nginx-light",)
    binaries = ("nginx",)
    light = True
    goaway = True
    stingy = (
        f"http2_max_concurrent_streams {STINGY_STREAMS}; keepalive_requests {GOAWAY_EVERY} "
        "(GOAWAY every 3 requests); http2_body_preread_size 16k (SETTINGS_INITIAL_WINDOW_SIZE "
        "16384); http2_chunk_size 1k (1 KiB DATA frames); ssl_buffer_size 4k. nginx never pads."
    )

    def version(self) -> str:
        return _first_line([_exe("nginx"), "-v"], r"nginx version: nginx/(\S+)")

    def _http2_on_directive(self) -> bool:
        """nginx 1.25.1 moved `http2` from `listen` to a directive of its own."""
        found = re.match(r"(\d+)\.(\d+)\.(\d+)", self.version())
        if found is None:
            return False
        return tuple(int(x) for x in found.groups()) >= (1, 25, 1)

    def launches(self, site: Site) -> list[Launch]:
        work = site.workdir
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (work / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        if self._http2_on_directive():
            listen = f"listen {LOOPBACK}:{site.port} ssl;\n        http2 on;"
        else:
            listen = f"listen {LOOPBACK}:{site.port} ssl http2;"
        stingy = ""
        if site.stingy:
            stingy = f"""
        http2_max_concurrent_streams {STINGY_STREAMS};
        keepalive_requests {GOAWAY_EVERY};
        http2_body_preread_size 16k;
        http2_chunk_size 1k;
        ssl_buffer_size 4k;"""
        conf = site.write(
            "nginx.conf",
            f"""daemon off;
master_process on;
worker_processes 1;
user root;
pid {work}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    types {{ video/mp4 mp4; }}
    default_type application/octet-stream;
    server {{
        {listen}
        server_name localhost;
        ssl_certificate {site.tls.cert_pem};
        ssl_certificate_key {site.tls.key_pem};
        root {site.docroot};{stingy}
    }}
}}
""",
        )
        return [self.launch(site, [_exe("nginx"), "-p", str(work), "-c", str(conf)])]


# ---------------------------------------------------------------------------------- Apache


class Apache(Server):
    name = "apache"
    packages = ("apache2",)
    binaries = ("apache2", "/usr/lib/apache2/modules/mod_http2.so")
    stingy = (
        f"H2MaxSessionStreams {STINGY_STREAMS}; H2WindowSize 16384; H2MaxDataFrameLen 1024 "
        "(1 KiB DATA frames); H2Padding 8 (0-255 bytes of padding on every frame); "
        "H2StreamMaxMemSize 4096. No GOAWAY every few requests: mod_http2 has no request limit "
        "per connection, and MaxKeepAliveRequests applies to HTTP/1.1 only (set to 3, curl "
        "fetched all 45 files over one HTTP/2 connection)."
    )
    MODULES = ("mpm_event", "authz_core", "mime", "socache_shmcb", "ssl", "http2")

    def version(self) -> str:
        return _first_line([_exe("apache2"), "-v"], r"Apache/(\S+)")

    def launches(self, site: Site) -> list[Launch]:
        work = site.workdir
        modules = "\n".join(
            f"LoadModule {m}_module /usr/lib/apache2/modules/mod_{m}.so" for m in self.MODULES
        )
        stingy = ""
        if site.stingy:
            stingy = f"""
H2MaxSessionStreams {STINGY_STREAMS}
H2WindowSize {STINGY_WINDOW}
H2MaxDataFrameLen 1024
H2Padding 8
H2StreamMaxMemSize 4096"""
        conf = site.write(
            "httpd.conf",
            f"""ServerRoot {work}
ServerName localhost
DefaultRuntimeDir {work}
PidFile {work}/httpd.pid
Mutex file:{work} default
ErrorLog /dev/stderr
LogLevel warn
User www-data
Group www-data
{modules}
Listen {LOOPBACK}:{site.port} https
TypesConfig /dev/null
AddType video/mp4 .mp4
KeepAlive On
Protocols h2 http/1.1
SSLEngine on
SSLSessionCache none
SSLCertificateFile {site.tls.cert_pem}
SSLCertificateKeyFile {site.tls.key_pem}
DocumentRoot {site.docroot}
<Directory {site.docroot}>
    Require all granted
</Directory>{stingy}
""",
        )
        argv = [_exe("apache2"), "-d", str(work), "-f", str(conf), "-DFOREGROUND"]
        return [self.launch(site, argv)]


# ------------------------------------------------------------------------------------- h2o


class H2o(Server):
    name = "h2o"
    packages = ("h2o",)
    binaries = ("h2o",)
    stingy = (
        f"http2-max-concurrent-requests-per-connection: {STINGY_STREAMS} (h2o 2.2 still "
        "advertises 100 streams and queues the requests past 2). Nothing else: h2o 2.2.5 has no "
        "setting for its receive windows (it advertises 16 MiB), frame sizes, padding, or a "
        "request limit per connection (its http2-latency-optimization-* settings size writes "
        "by the congestion window, which on loopback is past any max-cwnd, so frames stay 16 "
        "KiB: tried, no effect)."
    )

    def version(self) -> str:
        return _first_line([_exe("h2o"), "--version"], r"h2o version (\S+)")

    def launches(self, site: Site) -> list[Launch]:
        # No pid-file or error-log: h2o opens them after dropping to www-data, and its errors
        # go to stderr, which is the child's log.
        stingy = ""
        if site.stingy:
            stingy = f"http2-max-concurrent-requests-per-connection: {STINGY_STREAMS}\n"
        conf = site.write(
            "h2o.conf",
            f"""user: www-data
{stingy}listen:
  host: {LOOPBACK}
  port: {site.port}
  ssl:
    certificate-file: {site.tls.cert_pem}
    key-file: {site.tls.key_pem}
hosts:
  "localhost:{site.port}":
    paths:
      /:
        file.dir: {site.docroot}
        file.mime.addtypes:
          video/mp4: .mp4
""",
        )
        return [self.launch(site, [_exe("h2o"), "-c", str(conf)])]


# -------------------------------------------------------------------------------- lighttpd


class Lighttpd(Server):
    name = "lighttpd"
    packages = ("lighttpd", "lighttpd-mod-openssl")
    binaries = ("lighttpd", "/usr/lib/lighttpd/mod_openssl.so")
    stingy = (
        "nothing: lighttpd 1.4.69 has no HTTP/2 setting. Its SETTINGS are hard-coded (8 "
        "streams, 65536-byte initial window), so are its DATA frame sizes, it never pads, and "
        "server.max-keep-alive-requests limits HTTP/1.1 only (set to 3, one HTTP/2 connection "
        "still took 5 and then 19 requests, no GOAWAY). The stingy row runs the default config."
    )

    def version(self) -> str:
        return _first_line([_exe("lighttpd"), "-v"], r"lighttpd/(\S+)")

    def launches(self, site: Site) -> list[Launch]:
        work = site.workdir
        conf = site.write(
            "lighttpd.conf",
            f"""server.modules = ("mod_openssl")
server.document-root = "{site.docroot}"
server.bind = "{LOOPBACK}"
server.port = {site.port}
server.pid-file = "{work}/lighttpd.pid"
server.username = "www-data"
server.groupname = "www-data"
server.feature-flags = ("server.h2proto" => "enable")
mimetype.assign = (".mp4" => "video/mp4")
ssl.engine = "enable"
ssl.pemfile = "{site.tls.cert_pem}"
ssl.privkey = "{site.tls.key_pem}"
""",
        )
        return [self.launch(site, [_exe("lighttpd"), "-D", "-f", str(conf)])]


# ----------------------------------------------------------------------------------- Caddy


class Caddy(Server):
    name = "caddy"
    packages = ("caddy",)
    binaries = ("caddy",)
    goaway = True
    stingy = (
        "Caddy 2.6 exposes no HTTP/2 setting (Go's bundled server: 250 streams, 1 MiB "
        "windows, no padding). What it can do: a `Connection: close` response header on about "
        "a third of the requests (5 of the 16 first hex digits of the request's random UUID), "
        "which Go's HTTP/2 server turns into a graceful GOAWAY."
    )

    def version(self) -> str:
        return _first_line([_exe("caddy"), "version"], r"v?(\d\S*)")

    def launches(self, site: Site) -> list[Launch]:
        work = site.workdir
        routes: list[dict[str, object]] = []
        if site.stingy:
            # Random, not by path: a GOAWAY before a response is sent again on every retry of a
            # path, and a client that fails the stream it came with would never get that file.
            third = " || ".join(f"{{http.request.uuid}}.startsWith('{c}')" for c in "01234")
            routes.append(
                {
                    "match": [{"expression": third}],
                    "handle": [
                        {"handler": "headers", "response": {"set": {"Connection": ["close"]}}}
                    ],
                }
            )
        routes.append({"handle": [{"handler": "file_server", "root": str(site.docroot)}]})
        config = {
            "admin": {"disabled": True},
            "storage": {"module": "file_system", "root": str(work / "storage")},
            "logging": {"logs": {"default": {"level": "WARN"}}},
            "apps": {
                "http": {
                    "servers": {
                        "interop": {
                            "listen": [f"{LOOPBACK}:{site.port}"],
                            "protocols": ["h1", "h2"],
                            "automatic_https": {"disable": True},
                            "tls_connection_policies": [{}],
                            "routes": routes,
                        }
                    }
                },
                "tls": {
                    "certificates": {
                        "load_files": [
                            {
                                "certificate": str(site.tls.cert_pem),
                                "key": str(site.tls.key_pem),
                            }
                        ]
                    }
                },
            },
        }
        conf = site.write("caddy.json", json.dumps(config, indent=1))
        env = {
            "HOME": str(work),
            "XDG_DATA_HOME": str(work / "data"),
            "XDG_CONFIG_HOME": str(work / "config"),
        }
        argv = [_exe("caddy"), "run", "--config", str(conf)]
        return [self.launch(site, argv, env=env)]


# --------------------------------------------------------------------------------- haproxy


class Haproxy(Server):
    """haproxy serves no files itself: its HTTP/2 frontend forwards to a plain HTTP/1.1 file
    server (Python's http.server) on another loopback port, as it would to any backend."""

    name = "haproxy"
    packages = ("haproxy",)
    binaries = ("haproxy",)
    stingy = (
        f"tune.h2.max-concurrent-streams {STINGY_STREAMS}; tune.h2.initial-window-size 16384. "
        "haproxy 2.6 has no tune.h2.fe.max-total-streams (it came later), so no GOAWAY every "
        "few requests; it never pads, and its DATA frames follow its buffers (a tune.bufsize "
        "under 16384 breaks its HTTP/2 altogether: curl gets an empty reply)."
    )

    def version(self) -> str:
        return _first_line([_exe("haproxy"), "-v"], r"HA-?Proxy version (\S+)")

    def launches(self, site: Site) -> list[Launch]:
        stingy = ""
        if site.stingy:
            stingy = f"""    tune.h2.max-concurrent-streams {STINGY_STREAMS}
    tune.h2.initial-window-size {STINGY_WINDOW}
"""
        conf = site.write(
            "haproxy.cfg",
            f"""global
    maxconn 256
{stingy}
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend interop
    bind {LOOPBACK}:{site.port} ssl crt {site.tls.combined_pem} alpn h2,http/1.1
    default_backend files

backend files
    server files {LOOPBACK}:{site.aux_port}
""",
        )
        backend = Launch(
            "haproxy-backend",
            [
                sys.executable,
                "-m",
                "http.server",
                "--protocol",  # keep-alive: haproxy reuses its backend connections
                "HTTP/1.1",
                "--bind",
                LOOPBACK,
                "--directory",
                str(site.docroot),
                str(site.aux_port),
            ],
            site.aux_port,
            probe="tcp",
        )
        front = self.launch(site, [_exe("haproxy"), "-db", "-f", str(conf)])
        return [backend, front]


# -------------------------------------------------------------------------------------- Go


class GoNetHttp(Server):
    """tests/interop/goserver.go, built with Debian's Go and golang.org/x/net/http2 from
    golang-golang-x-net-dev (GOPATH mode: no module download)."""

    name = "go"
    packages = ("golang-go", "golang-golang-x-net-dev")
    binaries = ("go", "/usr/share/gocode/src/golang.org/x/net/http2/server.go")
    goaway = True
    stingy = (
        f"x/net/http2.Server{{MaxConcurrentStreams: {STINGY_STREAMS}, MaxUploadBufferPerStream: "
        "16384, MaxUploadBufferPerConnection: 65535}; the handler writes 4 KiB and flushes "
        f"(4 KiB DATA frames) and sets `Connection: close` on every {GOAWAY_EVERY}rd request of "
        "a connection (Go's graceful GOAWAY). Go's server never pads."
    )
    SOURCE = HERE / "goserver.go"

    def __init__(self) -> None:
        self.binary: Path | None = None

    def version(self) -> str:
        go = _first_line([_exe("go"), "version"], r"go version go(\S+)")
        xnet = _first_line(
            ["dpkg-query", "-W", "-f=${Version}", "golang-golang-x-net-dev"], r"(\S+)"
        )
        return f"go{go}, x/net {xnet}"

    def prepare(self, build_dir: Path) -> None:
        out = build_dir / "goserver"
        env = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": "/usr/share/gocode",
            "CGO_ENABLED": "0",
        }
        if not env.get("HOME"):  # Go's build cache lives under $HOME by default
            env["GOCACHE"] = str(build_dir / "gocache")
        build_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [_exe("go"), "build", "-o", str(out), str(self.SOURCE)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"go build failed:\n{result.stdout}{result.stderr}")
        self.binary = out

    def launches(self, site: Site) -> list[Launch]:
        if self.binary is None or not self.binary.exists():
            self.prepare(site.build_dir)
        assert self.binary is not None
        argv = [
            str(self.binary),
            f"-addr={LOOPBACK}:{site.port}",
            f"-root={site.docroot}",
            f"-cert={site.tls.cert_pem}",
            f"-key={site.tls.key_pem}",
            f"-mode={site.mode}",
            f"-streams={STINGY_STREAMS}",
            f"-goaway={GOAWAY_EVERY}",
            f"-chunk={STINGY_CHUNK}",
        ]
        return [self.launch(site, argv)]


# ------------------------------------------------------------------------------------ node


class NodeHttp2(Server):
    name = "node"
    packages = ("nodejs",)
    binaries = ("node",)
    goaway = True
    stingy = (
        f"settings {{maxConcurrentStreams: {STINGY_STREAMS}, initialWindowSize: 16384}}; "
        "paddingStrategy PADDING_STRATEGY_MAX (every frame padded as much as nghttp2 allows); "
        f"the file streamed in 4 KiB reads; session.goaway() then session.close() after every "
        f"{GOAWAY_EVERY} streams of a session."
    )
    SOURCE = HERE / "nodeserver.js"

    def version(self) -> str:
        return "node " + _first_line([_exe("node"), "--version"], r"v?(\S+)")

    def launches(self, site: Site) -> list[Launch]:
        argv = [
            _exe("node"),
            str(self.SOURCE),
            f"--port={site.port}",
            f"--host={LOOPBACK}",
            f"--root={site.docroot}",
            f"--cert={site.tls.cert_pem}",
            f"--key={site.tls.key_pem}",
            f"--mode={site.mode}",
            f"--streams={STINGY_STREAMS}",
            f"--goaway={GOAWAY_EVERY}",
            f"--chunk={STINGY_CHUNK}",
        ]
        return [self.launch(site, argv)]


# ---------------------------------------------------------------------------------- Tomcat


class Tomcat(Server):
    """Debian's tomcat10 (CATALINA_HOME) with a CATALINA_BASE of its own in the site folder: a
    minimal server.xml (one TLS connector with the HTTP/2 upgrade protocol) and a web.xml with
    only the default servlet, whose context's docBase is the files."""

    name = "tomcat"
    packages = ("tomcat10",)
    HOME = Path("/usr/share/tomcat10")
    binaries = (
        "java",
        "/usr/share/tomcat10/bin/catalina.sh",
        "/usr/share/tomcat10/lib/catalina.jar",
    )
    ready_timeout = 90.0
    stingy = (
        f'Http2Protocol maxConcurrentStreams="{STINGY_STREAMS}" maxConcurrentStreamExecution='
        f'"{STINGY_STREAMS}" initialWindowSize="16384" useSendfile="false"; the DefaultServlet '
        'with output="1024" and sendfileSize="-1" (no sendfile; DATA frames are still 8 KiB, '
        "Tomcat's stream buffer). Tomcat has no request limit per HTTP/2 connection (no "
        "GOAWAY) and never pads."
    )

    def version(self) -> str:
        jar = self.HOME / "lib" / "catalina.jar"
        return _first_line(
            ["java", "-cp", str(jar), "org.apache.catalina.util.ServerInfo"],
            r"Server version:\s*Apache Tomcat/(\S+)",
        )

    def launches(self, site: Site) -> list[Launch]:
        base = site.workdir / "catalina-base"
        for sub in ("conf", "logs", "temp", "work", "webapps"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        h2 = '<UpgradeProtocol className="org.apache.coyote.http2.Http2Protocol"'
        servlet_params = ""
        if site.stingy:
            h2 += (
                f' maxConcurrentStreams="{STINGY_STREAMS}"'
                f' maxConcurrentStreamExecution="{STINGY_STREAMS}"'
                f' initialWindowSize="{STINGY_WINDOW}" useSendfile="false"'
            )
            servlet_params = """
    <init-param><param-name>output</param-name><param-value>1024</param-value></init-param>
    <init-param><param-name>sendfileSize</param-name><param-value>-1</param-value></init-param>"""
        h2 += " />"
        (base / "conf" / "server.xml").write_text(
            f"""<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector port="{site.port}" address="{LOOPBACK}" SSLEnabled="true" maxThreads="32"
               protocol="org.apache.coyote.http11.Http11NioProtocol">
      {h2}
      <SSLHostConfig>
        <Certificate certificateFile="{site.tls.cert_pem}"
                     certificateKeyFile="{site.tls.key_pem}" type="RSA" />
      </SSLHostConfig>
    </Connector>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" autoDeploy="false" deployOnStartup="false"
            unpackWARs="false">
        <Context path="" docBase="{site.docroot}" />
      </Host>
    </Engine>
  </Service>
</Server>
""",
            encoding="utf-8",
        )
        (base / "conf" / "web.xml").write_text(
            f"""<?xml version="1.0" encoding="UTF-8"?>
<web-app xmlns="https://jakarta.ee/xml/ns/jakartaee" version="6.0" metadata-complete="true">
  <servlet>
    <servlet-name>default</servlet-name>
    <servlet-class>org.apache.catalina.servlets.DefaultServlet</servlet-class>
    <init-param><param-name>listings</param-name><param-value>false</param-value></init-param>{
                servlet_params
            }
    <load-on-startup>1</load-on-startup>
  </servlet>
  <servlet-mapping>
    <servlet-name>default</servlet-name>
    <url-pattern>/</url-pattern>
  </servlet-mapping>
  <mime-mapping><extension>mp4</extension><mime-type>video/mp4</mime-type></mime-mapping>
</web-app>
""",
            encoding="utf-8",
        )
        env = {
            "CATALINA_HOME": str(self.HOME),
            "CATALINA_BASE": str(base),
            "CATALINA_TMPDIR": str(base / "temp"),
            "CATALINA_PID": str(base / "catalina.pid"),
            "JAVA_OPTS": "-Xmx512m -Djava.awt.headless=true",
        }
        argv = [str(self.HOME / "bin" / "catalina.sh"), "run"]
        return [self.launch(site, argv, env=env, cwd=base)]


# ------------------------------------------------------------------------------- hypercorn


class Hypercorn(Server):
    """tests/interop/hypercorn_server.py: hypercorn and a tiny ASGI app that serves the files."""

    name = "hypercorn"
    pip_packages = ("hypercorn",)
    light = True
    stingy = (
        f"h2_max_concurrent_streams {STINGY_STREAMS}; SETTINGS_INITIAL_WINDOW_SIZE 16384 "
        "and 4 KiB DATA frames (hypercorn has options for neither: the script sets them on each "
        "connection's h2 state). h2 as a server never pads. No GOAWAY: "
        "keep_alive_max_requests sends one and then abandons the streams it accepted (h2 sends "
        "nothing after its own GOAWAY), which breaks curl too (see hypercorn_server.py)."
    )
    SOURCE = HERE / "hypercorn_server.py"

    def version(self) -> str:
        try:
            return "hypercorn " + importlib.metadata.version("hypercorn")
        except importlib.metadata.PackageNotFoundError:
            return "?"

    def launches(self, site: Site) -> list[Launch]:
        argv = [
            sys.executable,
            str(self.SOURCE),
            f"--port={site.port}",
            f"--host={LOOPBACK}",
            f"--root={site.docroot}",
            f"--cert={site.tls.cert_pem}",
            f"--key={site.tls.key_pem}",
            f"--mode={site.mode}",
            f"--streams={STINGY_STREAMS}",
            f"--goaway={GOAWAY_EVERY}",
            f"--chunk={STINGY_CHUNK}",
        ]
        return [self.launch(site, argv)]


SERVERS: dict[str, Server] = {
    server.name: server
    for server in (
        Nghttpd(),
        Apache(),
        Nginx(),
        H2o(),
        Lighttpd(),
        Caddy(),
        Haproxy(),
        GoNetHttp(),
        NodeHttp2(),
        Tomcat(),
        Hypercorn(),
    )
}
LIGHT = tuple(name for name, server in SERVERS.items() if server.light)


def new_site(
    server: Server, mode: Mode, root: Path, docroot: Path, tls: Tls, build_dir: Path
) -> Site:
    """A fresh folder for one server in one mode."""
    workdir = root / f"{server.name}-{mode}"
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    return Site(workdir=workdir, docroot=docroot, tls=tls, mode=mode, build_dir=build_dir)


def make_launches(server: Server, site: Site) -> list[Launch]:
    """Fresh ports, then the server's config and commands (called again on a port collision)."""
    site.port = free_port()
    site.aux_port = free_port()
    while site.aux_port == site.port:
        site.aux_port = free_port()
    return server.launches(site)
