// Watches: a repository's event stream (GET .../watch, server-sent
// events), kept open across server restarts and network faults. When a
// stream is re-established the callback gets an EventResync, since events
// may have been missed meanwhile: the caller re-reads the state.

package concurrency

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// How long a stream may stay silent before it is taken for dead: the
// server sends a heartbeat after 10 s of silence.
const watchSilenceLimit = 25 * time.Second

// Watch is an open watch of one repository.
type Watch struct {
	s *watchState
}

type watchState struct {
	client     *Client
	repoKey    string
	path       string
	fn         func(Event)
	cancel     context.CancelFunc
	done       chan struct{}
	inCallback atomic.Bool
	mu         sync.Mutex
	err        error
}

// Stop ends the watch. Once it returns the callback is not running and
// will not run again, unless Stop is called from the callback itself,
// where it only prevents later calls.
func (w *Watch) Stop() {
	w.s.cancel()
	if !w.s.inCallback.Load() {
		<-w.s.done
	}
}

// Done is closed when the watch has ended: stopped, its context ended,
// the client closed, or the server refused it for good (see Err).
func (w *Watch) Done() <-chan struct{} { return w.s.done }

// Err is why the watch ended, once Done is closed: context.Canceled
// after Stop or Client.Close, the context's error, or the server's
// refusal (an *Error).
func (w *Watch) Err() error {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.err
}

// Watch calls fn with each change of the repository (releases, expiries,
// admissions, limit changes, cleanups), one call at a time on the watch's
// own goroutine. It returns once the server has established the watch, so
// a change made after Watch returns is reported. The watch lasts until
// Stop, until ctx ends or until the client is closed; a broken stream is
// re-established (pauses doubling from 250 ms to 5 s), then fn gets an
// EventResync. A refusal that retrying cannot cure (a bad key, a token
// without the right) ends the watch; see Err.
func (c *Client) Watch(ctx context.Context, repoKey string, fn func(Event)) (*Watch, error) {
	const op = "Watch"
	ns, name, err := splitKey(op, "repository", repoKey)
	if err != nil {
		return nil, err
	}
	if fn == nil {
		return nil, invalidArgument(op, "callback: is nil")
	}
	wctx, cancel := context.WithCancel(ctx)
	s := &watchState{client: c, repoKey: repoKey, fn: fn, cancel: cancel,
		done: make(chan struct{}),
		path: c.pathOf("v1", "repositories", ns, name, "watch")}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		cancel()
		return nil, &Error{Code: CodeFailedPrecondition, Op: op, Message: "the client is closed"}
	}
	c.cancels[s] = cancel
	c.mu.Unlock()

	// The first stream: its error is the caller's.
	connectCtx := wctx
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var stop context.CancelFunc
		connectCtx, stop = context.WithTimeout(wctx, c.timeout)
		defer stop()
	}
	first, err := s.open(wctx, connectCtx)
	if err != nil {
		s.finish(nil)
		return nil, err
	}
	go s.run(wctx, first)
	return &Watch{s: s}, nil
}

// WatchSlotAvailability is the specification's call: callback runs when
// a slot of repo frees, a run is admitted, or the state must be re-read
// (after a reconnection), until ctx ends. It returns once the watch is
// established.
func (c *Client) WatchSlotAvailability(ctx context.Context, repo *Repository,
	callback func()) error {
	if repo == nil || callback == nil {
		return invalidArgument("WatchSlotAvailability", "repository and callback: must not be nil")
	}
	_, err := c.Watch(ctx, repo.Key(), func(Event) { callback() })
	return err
}

// stream is one open event stream.
type stream struct {
	resp   *http.Response
	reader *bufio.Reader
	cancel context.CancelFunc
	// alive is poked on every line read; a silent stream is closed.
	alive *time.Timer
}

func (st *stream) close() {
	st.alive.Stop()
	st.cancel()
	st.resp.Body.Close()
}

// open sends the request under streamCtx and waits for the "ready" event
// while connectCtx allows.
func (s *watchState) open(streamCtx, connectCtx context.Context) (*stream, error) {
	const op = "Watch"
	c := s.client
	sctx, cancel := context.WithCancel(streamCtx)
	req, err := http.NewRequestWithContext(sctx, "GET", c.urlOf(s.path, ""), nil)
	if err != nil {
		cancel()
		return nil, invalidArgument(op, "request: %v", err)
	}
	req.Header.Set("Accept", "text/event-stream")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// connectCtx bounds the time to "ready", not the stream's life.
	connected := make(chan struct{})
	defer close(connected)
	go func() {
		select {
		case <-connectCtx.Done():
			cancel()
		case <-connected:
		}
	}()
	resp, err := c.http.Do(req)
	if err != nil {
		cancel()
		if connectCtx.Err() != nil {
			return nil, contextError(op, connectCtx.Err())
		}
		return nil, transportError(sctx, op, c.base.Host, err)
	}
	if resp.StatusCode != 200 {
		defer resp.Body.Close()
		defer cancel()
		data := make([]byte, 4096)
		n, _ := resp.Body.Read(data)
		e := answerError(op, resp, data[:n])
		if e.Code == CodeResourceExhausted {
			e.Err = retryAfterError(retryAfter(resp.Header))
		}
		return nil, e
	}
	st := &stream{resp: resp, reader: bufio.NewReader(resp.Body), cancel: cancel,
		alive: time.AfterFunc(watchSilenceLimit, cancel)}
	ev, err := st.next()
	if err != nil {
		st.close()
		if connectCtx.Err() != nil {
			return nil, contextError(op, connectCtx.Err())
		}
		return nil, &Error{Code: CodeUnavailable, Op: op, Err: err,
			Message: "the event stream ended before it was ready: " + err.Error()}
	}
	if ev.Type != "ready" {
		st.close()
		return nil, &Error{Code: CodeInternal, Op: op,
			Message: "the event stream began with " + string(ev.Type) + ", not ready"}
	}
	return st, nil
}

// next reads the next event (heartbeats only keep the stream alive).
func (st *stream) next() (Event, error) {
	var name, data string
	for {
		line, err := st.reader.ReadString('\n')
		if err != nil {
			return Event{}, err
		}
		st.alive.Reset(watchSilenceLimit)
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if name == "" && data == "" {
				continue
			}
			var ev Event
			if data != "" {
				if err := json.Unmarshal([]byte(data), &ev); err != nil {
					return Event{}, err
				}
			}
			if name != "" {
				ev.Type = EventType(name)
			}
			return ev, nil
		case strings.HasPrefix(line, ":"):
			// a comment: the heartbeat
		case strings.HasPrefix(line, "event:"):
			name = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data += strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")
		}
	}
}

type retryAfterError time.Duration

func (r retryAfterError) Error() string { return "retry after " + time.Duration(r).String() }

// run reads events until the watch ends, re-opening broken streams.
func (s *watchState) run(ctx context.Context, st *stream) {
	pause := 250 * time.Millisecond
	for {
		for {
			ev, err := st.next()
			if err != nil {
				break
			}
			if ev.Repository == "" {
				ev.Repository = s.repoKey
			}
			pause = 250 * time.Millisecond
			s.deliver(ctx, ev)
		}
		st.close()
		for {
			if ctx.Err() != nil {
				s.finish(ctx.Err())
				return
			}
			wait := pause
			if pause *= 2; pause > 5*time.Second {
				pause = 5 * time.Second
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				continue
			case <-t.C:
			}
			connectCtx, stop := context.WithTimeout(ctx, 30*time.Second)
			next, err := s.open(ctx, connectCtx)
			stop()
			if err == nil {
				st = next
				s.deliver(ctx, Event{Type: EventResync, Repository: s.repoKey})
				break
			}
			var after retryAfterError
			if errors.As(err, &after) && time.Duration(after) > pause {
				pause = time.Duration(after)
			}
			if !keepsTrying(err) && ctx.Err() == nil {
				s.finish(err)
				return
			}
		}
	}
}

// keepsTrying: a reconnection failed for a reason that may pass.
func keepsTrying(err error) bool {
	switch CodeOf(err) {
	case CodeUnavailable, CodeResourceExhausted, CodeInternal, CodeDeadlineExceeded,
		CodeCancelled:
		return true
	}
	return false
}

func (s *watchState) deliver(ctx context.Context, ev Event) {
	if ctx.Err() != nil {
		return
	}
	s.inCallback.Store(true)
	defer s.inCallback.Store(false)
	s.fn(ev)
}

func (s *watchState) finish(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
	s.cancel()
	s.client.mu.Lock()
	delete(s.client.cancels, s)
	s.client.mu.Unlock()
	close(s.done)
}
