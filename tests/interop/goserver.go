// goserver: the interop matrix's Go net/http HTTP/2 server (tests/interop/servers.py, "go").
//
// Built in GOPATH mode against Debian's golang-golang-x-net-dev (no module download):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o goserver goserver.go
//
// -mode=default: net/http's FileServer behind x/net/http2 with its default settings.
// -mode=stingy: MaxConcurrentStreams -streams, 16 KiB per-stream and 64 KiB per-connection
// receive windows, the file written -chunk bytes at a time with a Flush after each (DATA frames
// of that size), and "Connection: close" on every -goaway'th request of a connection, which Go's
// HTTP/2 server turns into a graceful GOAWAY (the streams it accepted finish).
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"sync"

	"golang.org/x/net/http2"
)

type stingyHandler struct {
	root   string
	chunk  int
	goaway int
	mu     sync.Mutex
	counts map[string]int // requests per connection (by the client's address and port)
}

func (h *stingyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := path.Clean("/" + r.URL.Path)
	f, err := os.Open(filepath.Join(h.root, filepath.FromSlash(name)))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil || info.IsDir() {
		http.NotFound(w, r)
		return
	}
	h.mu.Lock()
	h.counts[r.RemoteAddr]++
	n := h.counts[r.RemoteAddr]
	h.mu.Unlock()
	header := w.Header()
	header.Set("Content-Type", "video/mp4")
	header.Set("Content-Length", strconv.FormatInt(info.Size(), 10))
	if h.goaway > 0 && n%h.goaway == 0 {
		header.Set("Connection", "close") // x/net/http2: a graceful GOAWAY
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	flusher, _ := w.(http.Flusher)
	buf := make([]byte, h.chunk)
	for {
		k, err := f.Read(buf)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			return
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	root := flag.String("root", ".", "folder to serve")
	cert := flag.String("cert", "", "certificate chain (PEM)")
	key := flag.String("key", "", "private key (PEM)")
	mode := flag.String("mode", "default", "default or stingy")
	streams := flag.Int("streams", 2, "stingy: max concurrent streams")
	goaway := flag.Int("goaway", 3, "stingy: GOAWAY after this many requests of a connection")
	chunk := flag.Int("chunk", 4096, "stingy: bytes per write and flush")
	flag.Parse()

	var handler http.Handler = http.FileServer(http.Dir(*root))
	h2 := &http2.Server{}
	if *mode == "stingy" {
		handler = &stingyHandler{root: *root, chunk: *chunk, goaway: *goaway, counts: map[string]int{}}
		h2.MaxConcurrentStreams = uint32(*streams)
		h2.MaxUploadBufferPerStream = 16384
		h2.MaxUploadBufferPerConnection = 65535
	}
	srv := &http.Server{Addr: *addr, Handler: handler, ErrorLog: log.New(os.Stderr, "", log.LstdFlags)}
	if err := http2.ConfigureServer(srv, h2); err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("serving %s on %s (%s)", *root, ln.Addr(), *mode)
	log.Fatal(srv.ServeTLS(ln, *cert, *key))
}
