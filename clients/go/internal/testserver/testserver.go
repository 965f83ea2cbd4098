// Package testserver starts the real `pac-concurrency serve` for the Go
// client's tests: the binary of this checkout's build (or $PAC_BINARY) on
// a free loopback port, with the memory driver or the PostgreSQL test
// server that scripts/pg-test-server.sh started (its PAC_TEST_PG_*
// variables).
package testserver

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary is the pac-concurrency binary under test: $PAC_BINARY, else
// build/pac-concurrency in the nearest directory above that has one.
func Binary(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("PAC_BINARY"); b != "" {
		return b
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "build", "pac-concurrency")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no build/pac-concurrency above this directory: run `make build` " +
				"or set PAC_BINARY")
		}
		dir = parent
	}
}

// Backend is a driver configuration, as environment variables of serve.
type Backend struct {
	Name string
	Env  []string
}

// Backends are the memory driver, and PostgreSQL and etcd when their test
// servers are up. In CI (CI=true) a missing server fails the test instead
// of being left out.
func Backends(t testing.TB) []Backend {
	t.Helper()
	out := []Backend{{Name: "memory", Env: []string{"PAC_CONCURRENCY_DRIVER=memory"}}}
	missing := func(v, script string) bool {
		if os.Getenv(v) != "" {
			return false
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set: start the test server (scripts/%s) and source its env file",
				v, script)
		}
		t.Logf("%s is not set: %s is left out", v, script)
		return true
	}
	if !missing("PAC_TEST_PG_PORT", "pg-test-server.sh") {
		out = append(out, Backend{Name: "postgresql", Env: []string{
			"PAC_CONCURRENCY_DRIVER=postgresql",
			"PAC_POSTGRESQL_HOST=" + os.Getenv("PAC_TEST_PG_HOST"),
			"PAC_POSTGRESQL_PORT=" + os.Getenv("PAC_TEST_PG_PORT"),
			"PAC_POSTGRESQL_DATABASE=" + os.Getenv("PAC_TEST_PG_DATABASE"),
			"PAC_POSTGRESQL_USERNAME=" + os.Getenv("PAC_TEST_PG_USER"),
			"PAC_POSTGRESQL_PASSWORD_FILE=" + os.Getenv("PAC_TEST_PG_PASSWORD_FILE"),
		}})
	}
	if !missing("PAC_TEST_ETCD_ENDPOINTS", "etcd-test-server.sh") {
		out = append(out, Backend{Name: "etcd", Env: []string{
			"PAC_CONCURRENCY_DRIVER=etcd",
			"PAC_ETCD_ENDPOINTS=" + os.Getenv("PAC_TEST_ETCD_ENDPOINTS"),
		}})
	}
	return out
}

// Namespace is a fresh namespace name, so tests sharing a PostgreSQL
// database do not see each other's repositories.
func Namespace(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// Server is a running `pac-concurrency serve`.
type Server struct {
	URL  string
	Addr string // host:port

	t    testing.TB
	env  []string
	args []string
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs bytes.Buffer
	done chan struct{}
}

var servingLine = regexp.MustCompile(`serving on (https?)://(\S+)`)

// Start runs serve with env (added to this process's) and args after
// `serve --listen 127.0.0.1:0`, and returns once it serves. The server is
// stopped when the test ends; its log is shown if the test failed.
func Start(t testing.TB, env []string, args ...string) *Server {
	t.Helper()
	s := &Server{t: t, env: env, args: args}
	s.start("127.0.0.1:0")
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			s.mu.Lock()
			t.Logf("server log:\n%s", s.logs.String())
			s.mu.Unlock()
		}
	})
	return s
}

type logWriter struct{ s *Server }

func (w logWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.logs.Write(p)
}

func (s *Server) start(listen string) {
	s.t.Helper()
	args := append([]string{"serve", "--listen", listen}, s.args...)
	cmd := exec.Command(Binary(s.t), args...)
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stderr = logWriter{s}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	lines := make(chan string, 1)
	go func() {
		r := bufio.NewReader(stdout)
		line, _ := r.ReadString('\n')
		lines <- line
		_, _ = r.WriteTo(logWriter{s})
	}()
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(s.done)
	select {
	case line := <-lines:
		m := servingLine.FindStringSubmatch(line)
		if m == nil {
			s.Stop()
			s.t.Fatalf("serve %s did not start: %q\n%s", strings.Join(args, " "), line,
				s.logs.String())
		}
		s.Addr = m[2]
		s.URL = m[1] + "://" + m[2]
	case <-time.After(30 * time.Second):
		s.Stop()
		s.t.Fatalf("serve did not start within 30 s:\n%s", s.logs.String())
	}
}

// Stop ends the server (SIGTERM, then SIGKILL after 10 s) and waits.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Kill ends the server at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart starts the stopped server again on the same address (the
// server listens with SO_REUSEADDR, so the port is free at once).
func (s *Server) Restart() {
	s.t.Helper()
	s.start(s.Addr)
}

// WriteFile writes a file in the test's temporary directory.
func WriteFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Must fails the test on err.
func Must(t testing.TB, err error, what string, args ...any) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", fmt.Sprintf(what, args...), err)
	}
}
