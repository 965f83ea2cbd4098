// Tests of the client against the real `pac-concurrency serve`
// (internal/testserver): the specification's calls, typed errors, watches
// across a server restart, WaitForSlot, KeepAlive, TLS and tokens, many
// goroutines on two servers, the QueueManager method set and InitQueues.
// Each runs on the memory driver, and on PostgreSQL when its test server
// is up (always in CI).

package concurrency_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	concurrency "github.com/pac-concurrency/pac-concurrency/clients/go"
	"github.com/pac-concurrency/pac-concurrency/clients/go/internal/testserver"
)

func newClient(t *testing.T, opts concurrency.Options) *concurrency.Client {
	t.Helper()
	c, err := concurrency.New(opts)
	testserver.Must(t, err, "New(%+v)", opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func repoOf(t *testing.T, key string, limit int) *concurrency.Repository {
	t.Helper()
	r, err := concurrency.NewRepository(key, limit)
	testserver.Must(t, err, "NewRepository(%q)", key)
	return r
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// awaitQueued waits up to 10 s for repo's queue to hold n runs.
func awaitQueued(t *testing.T, ctx context.Context, c *concurrency.Client,
	repo *concurrency.Repository, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		q, err := c.GetQueuedPipelineRuns(ctx, repo)
		testserver.Must(t, err, "GetQueuedPipelineRuns")
		if len(q) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queue holds %v, not %d runs, after 10 s", q, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// eachBackend runs f on a fresh server per backend.
func eachBackend(t *testing.T, f func(t *testing.T, b testserver.Backend)) {
	for _, b := range testserver.Backends(t) {
		b := b
		t.Run(b.Name, func(t *testing.T) { f(t, b) })
	}
}

func TestSpecificationCallsKeepTheLimitAndTheOrder(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL + "/"}) // a trailing slash is fine
		ctx := timeout(t, 30*time.Second)
		ns := testserver.Namespace("spec")
		repo := repoOf(t, ns+"/app", 1)

		ok, leaseA, err := c.AcquireSlot(ctx, repo, ns+"/pr-a")
		if err != nil || !ok || leaseA == "" {
			t.Fatalf("AcquireSlot(pr-a) = %v, %q, %v; want a slot", ok, leaseA, err)
		}
		for _, run := range []string{"pr-b", "pr-c"} {
			ok, lease, err := c.AcquireSlot(ctx, repo, ns+"/"+run)
			if err != nil || ok || lease != "" {
				t.Fatalf("AcquireSlot(%s) = %v, %q, %v; want queued", run, ok, lease, err)
			}
		}
		// Submitting again keeps the place and gives the lease back.
		again, err := c.Submit(ctx, repo, ns+"/pr-a", concurrency.SubmitOptions{})
		if err != nil || !again.Acquired || again.Lease.LeaseID != leaseA {
			t.Fatalf("re-submit of the holder = %+v, %v; want its lease %q", again, err, leaseA)
		}
		if n, err := c.GetCurrentSlots(ctx, repo); err != nil || n != 1 {
			t.Fatalf("GetCurrentSlots = %d, %v; want 1", n, err)
		}
		queued, err := c.GetQueuedPipelineRuns(ctx, repo)
		if err != nil || strings.Join(queued, ",") != ns+"/pr-b,"+ns+"/pr-c" {
			t.Fatalf("GetQueuedPipelineRuns = %v, %v; want pr-b, pr-c", queued, err)
		}
		q, err := c.GetQueue(ctx, repo.Key())
		if err != nil || len(q) != 2 || q[0].Position != 1 || q[1].Position != 2 ||
			q[0].CreationTime.IsZero() {
			t.Fatalf("GetQueue = %+v, %v", q, err)
		}

		testserver.Must(t, c.ReleaseSlot(ctx, leaseA, ns+"/pr-a", repo.Key()), "ReleaseSlot")
		running, err := c.GetRunningPipelineRuns(ctx, repo)
		if err != nil || len(running) != 1 || running[0] != ns+"/pr-b" {
			t.Fatalf("after the release running = %v, %v; want pr-b", running, err)
		}
		if _, err := c.RenewLease(ctx, leaseA); !errors.Is(err, concurrency.ErrLeaseLost) {
			t.Fatalf("RenewLease of the released lease = %v; want LEASE_LOST", err)
		}

		repo3 := repoOf(t, repo.Key(), 3)
		admitted, err := c.SetRepositoryLimit(ctx, repo3)
		if err != nil || len(admitted) != 1 || admitted[0].PipelineRun != ns+"/pr-c" {
			t.Fatalf("raising the limit admitted %+v, %v; want pr-c", admitted, err)
		}
		st, err := c.Status(ctx, repo.Key())
		if err != nil || st.ConcurrencyLimit == nil || *st.ConcurrencyLimit != 3 ||
			st.InUse != 2 || st.QueueDepth != 0 {
			t.Fatalf("Status = %+v, %v", st, err)
		}
		list, err := c.ListRepositories(ctx, ns)
		if err != nil || len(list) != 1 || list[0].Repository != repo.Key() {
			t.Fatalf("ListRepositories(%s) = %+v, %v", ns, list, err)
		}
		// In pages: a second repository of ns comes on the second page.
		second := repoOf(t, ns+"/zz", 1)
		if _, err := c.SetRepositoryLimit(ctx, second); err != nil {
			t.Fatalf("SetRepositoryLimit(%s): %v", second.Key(), err)
		}
		page, next, err := c.ListRepositoriesPage(ctx, ns, 1, "")
		if err != nil || len(page) != 1 || page[0].Repository != repo.Key() || next != repo.Key() {
			t.Fatalf("first page = %+v, %q, %v", page, next, err)
		}
		page, next, err = c.ListRepositoriesPage(ctx, ns, 1, next)
		if err != nil || len(page) != 1 || page[0].Repository != second.Key() || next != "" {
			t.Fatalf("second page = %+v, %q, %v", page, next, err)
		}
		testserver.Must(t, c.CleanupRepository(ctx, second), "CleanupRepository")
		// The specification's states.
		if _, err := c.GetRepositoryState(ctx, repo.Key()); !errors.Is(err, concurrency.ErrNotFound) {
			t.Fatalf("GetRepositoryState before any was set: %v; want NOT_FOUND", err)
		}
		testserver.Must(t, c.SetRepositoryState(ctx, repo, "active"), "SetRepositoryState")
		testserver.Must(t, c.SetPipelineRunState(ctx, ns+"/pr-b", "started"), "SetPipelineRunState")
		if s, err := c.GetRepositoryState(ctx, repo.Key()); err != nil || s != "active" {
			t.Fatalf("GetRepositoryState = %q, %v", s, err)
		}
		if s, err := c.GetPipelineRunState(ctx, ns+"/pr-b"); err != nil || s != "started" {
			t.Fatalf("GetPipelineRunState = %q, %v", s, err)
		}
		err = c.SetPipelineRunState(ctx, ns+"/pr-b", strings.Repeat("x", 51))
		if !errors.Is(err, concurrency.ErrInvalidArgument) || !strings.Contains(err.Error(), "at most 50") {
			t.Fatalf("a 51-character state: %v", err)
		}
		testserver.Must(t, c.CleanupRepository(ctx, repo), "CleanupRepository")
		if _, err := c.GetRepositoryState(ctx, repo.Key()); !errors.Is(err, concurrency.ErrNotFound) {
			t.Fatalf("GetRepositoryState after the cleanup: %v; want NOT_FOUND", err)
		}
		if n, err := c.GetCurrentSlots(ctx, repo); err != nil || n != 0 {
			t.Fatalf("after the cleanup GetCurrentSlots = %d, %v", n, err)
		}
		v, err := c.Version(ctx)
		if err != nil || v.Driver != b.Name || v.Version == "" {
			t.Fatalf("Version = %+v, %v; want driver %s", v, err, b.Name)
		}
	})
}

func TestErrorsAreTypedAndNameWhatIsWrong(t *testing.T) {
	srv := testserver.Start(t, nil)
	c := newClient(t, concurrency.Options{URL: srv.URL})
	ctx := timeout(t, 30*time.Second)

	expect := func(what string, err error, code concurrency.Code, words ...string) {
		t.Helper()
		var e *concurrency.Error
		if !errors.As(err, &e) || e.Code != code {
			t.Fatalf("%s: got %v; want code %s", what, err, code)
		}
		for _, w := range words {
			if !strings.Contains(e.Error(), w) {
				t.Fatalf("%s: %q does not say %q", what, e.Error(), w)
			}
		}
	}
	_, err := concurrency.New(concurrency.Options{URL: "127.0.0.1:8080"})
	expect("a URL without a scheme", err, concurrency.CodeInvalidArgument, "URL", "http://")
	_, err = concurrency.New(concurrency.Options{URL: srv.URL, CertFile: "c.pem"})
	expect("a certificate without its key", err, concurrency.CodeInvalidArgument, "KeyFile")

	_, err = c.Submit(ctx, &concurrency.Repository{Namespace: "a", Name: "b/c"}, "a/pr",
		concurrency.SubmitOptions{})
	expect("a key of three parts", err, concurrency.CodeInvalidArgument, "repository", "a/b/c")
	_, err = c.Submit(ctx, repoOf(t, "Team/app", 1), "team/pr", concurrency.SubmitOptions{})
	expect("an upper-case namespace (checked by the server)", err,
		concurrency.CodeInvalidArgument, "repository")
	if e := (*concurrency.Error)(nil); errors.As(err, &e) && e.HTTPStatus != 400 {
		t.Fatalf("the server's refusal has HTTP status %d, want 400", e.HTTPStatus)
	}
	_, err = c.SetRepositoryLimit(ctx, &concurrency.Repository{Namespace: "team", Name: "app",
		ConcurrencyLimit: new(int)})
	if err != nil {
		t.Fatalf("limit 0 (unlimited): %v", err)
	}
	neg := -1
	_, err = c.SetRepositoryLimit(ctx, &concurrency.Repository{Namespace: "team", Name: "app",
		ConcurrencyLimit: &neg})
	expect("a negative limit", err, concurrency.CodeInvalidArgument, "concurrency_limit", "-1")
	_, err = c.RenewLease(ctx, "m-no-such-lease")
	expect("renewing an unknown lease", err, concurrency.CodeLeaseLost)
	_, err = c.Submit(ctx, &concurrency.Repository{Namespace: "team", Name: "nolimit"},
		"team/pr-1", concurrency.SubmitOptions{})
	expect("a submit without any known limit", err, concurrency.CodeFailedPrecondition)

	// A deadline that has passed: DeadlineExceeded, and the context's error.
	past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	_, err = c.Status(past, "team/app")
	expect("a passed deadline", err, concurrency.CodeDeadlineExceeded)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v is not context.DeadlineExceeded", err)
	}

	// A server that is not there: Unavailable, after the retries.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	testserver.Must(t, err, "listen")
	gone := l.Addr().String()
	l.Close()
	dead := newClient(t, concurrency.Options{URL: "http://" + gone, MaxRetries: 2})
	start := time.Now()
	_, err = dead.Status(ctx, "team/app")
	expect("an unreachable server", err, concurrency.CodeUnavailable, gone)
	if !errors.Is(err, concurrency.ErrUnavailable) {
		t.Fatalf("errors.Is(%v, ErrUnavailable) is false", err)
	}
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Fatalf("gave up after %v: the two retries pause 100 and 200 ms", took)
	}
	testserver.Must(t, c.Close(), "Close")
	_, err = c.Status(ctx, "team/app")
	expect("a closed client", err, concurrency.CodeFailedPrecondition, "closed")
}

func TestWatchReportsChangesAndResyncsAfterTheServerRestarts(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL})
		ctx := timeout(t, 60*time.Second)
		ns := testserver.Namespace("watch")
		repo := repoOf(t, ns+"/app", 1)
		events := make(chan concurrency.Event, 100)
		w, err := c.Watch(ctx, repo.Key(), func(e concurrency.Event) { events <- e })
		testserver.Must(t, err, "Watch")
		defer w.Stop()

		next := func(want concurrency.EventType) concurrency.Event {
			t.Helper()
			for {
				select {
				case e := <-events:
					if e.Type == want {
						return e
					}
				case <-time.After(20 * time.Second):
					t.Fatalf("no %s event within 20 s", want)
				}
			}
		}
		_, lease, err := c.AcquireSlot(ctx, repo, ns+"/pr-1")
		testserver.Must(t, err, "AcquireSlot")
		_, _, err = c.AcquireSlot(ctx, repo, ns+"/pr-2")
		testserver.Must(t, err, "AcquireSlot")
		testserver.Must(t, c.ReleaseSlot(ctx, lease, ns+"/pr-1", repo.Key()), "ReleaseSlot")
		if e := next(concurrency.EventReleased); e.PipelineRun != ns+"/pr-1" ||
			e.Repository != repo.Key() {
			t.Fatalf("released event %+v", e)
		}
		if e := next(concurrency.EventAdmitted); e.PipelineRun != ns+"/pr-2" {
			t.Fatalf("admitted event %+v", e)
		}

		// A crash and a restart on the same port: the stream comes back and
		// says to re-read the state, then reports changes again.
		srv.Kill()
		srv.Restart()
		next(concurrency.EventResync)
		select {
		case <-w.Done():
			t.Fatalf("the watch ended: %v", w.Err())
		default:
		}
		_, err = c.SetRepositoryLimit(ctx, repoOf(t, repo.Key(), 2))
		testserver.Must(t, err, "SetRepositoryLimit")
		next(concurrency.EventLimitChanged)

		w.Stop()
		<-w.Done()
		if !errors.Is(w.Err(), context.Canceled) {
			t.Fatalf("Err after Stop = %v", w.Err())
		}
	})
}

func TestWatchRefusalsAreErrors(t *testing.T) {
	srv := testserver.Start(t, nil, "--max-watches", "1")
	c := newClient(t, concurrency.Options{URL: srv.URL})
	ctx := timeout(t, 30*time.Second)
	w, err := c.Watch(ctx, "team/app", func(concurrency.Event) {})
	testserver.Must(t, err, "the first watch")
	defer w.Stop()
	_, err = c.Watch(ctx, "team/app", func(concurrency.Event) {})
	if !errors.Is(err, concurrency.ErrResourceExhausted) {
		t.Fatalf("a watch past --max-watches: %v; want RESOURCE_EXHAUSTED", err)
	}
	_, err = c.Watch(ctx, "team/App", func(concurrency.Event) {})
	if !errors.Is(err, concurrency.ErrInvalidArgument) {
		t.Fatalf("a watch of a bad key: %v; want INVALID_ARGUMENT", err)
	}
}

func TestWaitForSlotWaitsForTheReleaseAndLeavesTheQueueWhenItGivesUp(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL})
		ctx := timeout(t, 60*time.Second)
		ns := testserver.Namespace("wait")
		repo := repoOf(t, ns+"/app", 1)
		holder, err := c.WaitForSlot(ctx, repo, ns+"/pr-1", concurrency.WaitOptions{})
		testserver.Must(t, err, "WaitForSlot on a free slot")

		// Gives up: the run leaves the queue.
		short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		var positions []int
		_, err = c.WaitForSlot(short, repo, ns+"/pr-late", concurrency.WaitOptions{
			OnQueued: func(p int) { positions = append(positions, p) }})
		if !errors.Is(err, concurrency.ErrDeadlineExceeded) ||
			!errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitForSlot past its deadline: %v", err)
		}
		if len(positions) != 1 || positions[0] != 1 {
			t.Fatalf("positions told %v; want [1]", positions)
		}
		if q, _ := c.GetQueuedPipelineRuns(ctx, repo); len(q) != 0 {
			t.Fatalf("the run that gave up is still queued: %v", q)
		}

		// Waits: admitted by the release (the poll is long, so the watch
		// is what wakes it).
		got := make(chan *concurrency.Lease, 1)
		fail := make(chan error, 1)
		go func() {
			l, err := c.WaitForSlot(ctx, repo, ns+"/pr-2",
				concurrency.WaitOptions{PollInterval: time.Minute})
			if err != nil {
				fail <- err
				return
			}
			got <- l
		}()
		awaitQueued(t, ctx, c, repo, 1)
		released := time.Now()
		_, err = c.Release(ctx, repo.Key(), ns+"/pr-1", holder.LeaseID)
		testserver.Must(t, err, "Release")
		select {
		case l := <-got:
			if l.PipelineRun != ns+"/pr-2" || l.FencingToken <= holder.FencingToken {
				t.Fatalf("WaitForSlot gave %+v after %+v", l, holder)
			}
			if took := time.Since(released); took > 30*time.Second {
				t.Fatalf("admitted %v after the release: the watch did not wake it", took)
			}
		case err := <-fail:
			t.Fatalf("WaitForSlot: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("WaitForSlot did not return within 30 s of the release")
		}
	})
}

func TestClearQueueStopsAWaitAndRefusesTheRunsAfterwards(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL})
		ctx := timeout(t, 60*time.Second)
		ns := testserver.Namespace("clear")
		repo := repoOf(t, ns+"/app", 1)
		holder, err := c.WaitForSlot(ctx, repo, ns+"/pr-1", concurrency.WaitOptions{})
		testserver.Must(t, err, "WaitForSlot on a free slot")
		removed := make(chan concurrency.Event, 4)
		w, err := c.Watch(ctx, repo.Key(), func(ev concurrency.Event) {
			if ev.Type == concurrency.EventRemoved {
				removed <- ev
			}
		})
		testserver.Must(t, err, "Watch")
		defer w.Stop()
		fail := make(chan error, 1)
		go func() {
			_, err := c.WaitForSlot(ctx, repo, ns+"/pr-2",
				concurrency.WaitOptions{PollInterval: time.Minute})
			fail <- err
		}()
		awaitQueued(t, ctx, c, repo, 1)
		runs, err := c.ClearQueue(ctx, repo.Key())
		if err != nil || len(runs) != 1 || runs[0] != ns+"/pr-2" {
			t.Fatalf("ClearQueue = %v, %v; want [pr-2]", runs, err)
		}
		select {
		case err := <-fail:
			var e *concurrency.Error
			if !errors.Is(err, concurrency.ErrRunRemoved) || !errors.As(err, &e) ||
				e.Reason != "cleared" {
				t.Fatalf("the cleared wait ended with %v; want RUN_REMOVED (cleared)", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the cleared wait did not end within 30 s")
		}
		select {
		case ev := <-removed:
			if ev.PipelineRun != ns+"/pr-2" || ev.Reason != "cleared" {
				t.Fatalf("removed event %+v", ev)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no removed event within 10 s")
		}
		_, err = c.Release(ctx, repo.Key(), ns+"/pr-1", holder.LeaseID)
		testserver.Must(t, err, "Release")
		if _, err := c.Submit(ctx, repo, ns+"/pr-2", concurrency.SubmitOptions{}); !errors.Is(err, concurrency.ErrRunRemoved) {
			t.Fatalf("a cleared run submitted again: %v; want RUN_REMOVED", err)
		}
		if n, err := c.GetCurrentSlots(ctx, repo); err != nil || n != 0 {
			t.Fatalf("GetCurrentSlots = %d, %v; want 0", n, err)
		}
	})
}

// A run's own queue time limit ends its wait with ErrRunRemoved
// ("timed-out"); the repository's limit, set with SetPolicy, applies to a
// run without one, and a zero Policy forgets it.
func TestAQueueTimeLimitEndsAWait(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL})
		ctx := timeout(t, 60*time.Second)
		ns := testserver.Namespace("qtime")
		repo := repoOf(t, ns+"/app", 1)
		_, err := c.WaitForSlot(ctx, repo, ns+"/holder", concurrency.WaitOptions{})
		testserver.Must(t, err, "WaitForSlot on a free slot")
		timedOut := func(err error) bool {
			var e *concurrency.Error
			return errors.Is(err, concurrency.ErrRunRemoved) && errors.As(err, &e) &&
				e.Reason == "timed-out"
		}
		start := time.Now()
		_, err = c.WaitForSlot(ctx, repo, ns+"/own",
			concurrency.WaitOptions{MaxQueueTime: 300 * time.Millisecond, PollInterval: time.Minute})
		if !timedOut(err) || time.Since(start) < 300*time.Millisecond {
			t.Fatalf("a wait with its own limit ended with %v after %s; want RUN_REMOVED (timed-out)",
				err, time.Since(start))
		}
		p, err := c.SetPolicy(ctx, repo.Key(), concurrency.Policy{MaxQueueTime: 300 * time.Millisecond})
		if err != nil || p.MaxQueueTime != 300*time.Millisecond || p.Mode != "oldest-first" {
			t.Fatalf("SetPolicy = %+v, %v", p, err)
		}
		if got, err := c.GetPolicy(ctx, repo.Key()); err != nil || !reflect.DeepEqual(got, p) {
			t.Fatalf("GetPolicy = %+v, %v; want %+v", got, err, p)
		}
		_, err = c.WaitForSlot(ctx, repo, ns+"/by-repo", concurrency.WaitOptions{PollInterval: time.Minute})
		if !timedOut(err) {
			t.Fatalf("a wait under the repository's limit ended with %v; want RUN_REMOVED (timed-out)", err)
		}
		if _, err := c.SetPolicy(ctx, repo.Key(), concurrency.Policy{}); err != nil {
			t.Fatalf("SetPolicy(zero) = %v", err)
		}
		if got, err := c.GetPolicy(ctx, repo.Key()); err != nil || !reflect.DeepEqual(got, concurrency.Policy{Mode: "oldest-first"}) {
			t.Fatalf("GetPolicy after forgetting = %+v, %v", got, err)
		}
		if _, err := c.SetPolicy(ctx, repo.Key(), concurrency.Policy{MaxQueueTime: -time.Second}); !errors.Is(err, concurrency.ErrInvalidArgument) {
			t.Fatalf("SetPolicy(negative) = %v; want INVALID_ARGUMENT", err)
		}
	})
}

// Under the "priority" mode a run of a higher Priority is admitted first;
// the status says the mode and each run's priority.
func TestPriorityModeAdmitsTheHigherRunFirst(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL})
		ctx := timeout(t, 60*time.Second)
		ns := testserver.Namespace("prio")
		repo := repoOf(t, ns+"/app", 1)
		if _, err := c.SetPolicy(ctx, repo.Key(), concurrency.Policy{Mode: "priority"}); err != nil {
			t.Fatalf("SetPolicy = %v", err)
		}
		holder, err := c.WaitForSlot(ctx, repo, ns+"/holder", concurrency.WaitOptions{})
		testserver.Must(t, err, "WaitForSlot on a free slot")
		if _, err := c.Submit(ctx, repo, ns+"/low", concurrency.SubmitOptions{}); err != nil {
			t.Fatalf("Submit(low) = %v", err)
		}
		high, err := c.Submit(ctx, repo, ns+"/high", concurrency.SubmitOptions{Priority: 3})
		if err != nil || high.Position != 1 {
			t.Fatalf("Submit(high) = %+v, %v; want position 1", high, err)
		}
		st, err := c.Status(ctx, repo.Key())
		if err != nil || st.QueueMode != "priority" || len(st.Queued) != 2 ||
			st.Queued[0].PipelineRun != ns+"/high" || st.Queued[0].Priority != 3 {
			t.Fatalf("Status = %+v, %v", st, err)
		}
		r, err := c.Release(ctx, repo.Key(), ns+"/holder", holder.LeaseID)
		if err != nil || len(r.Admitted) != 1 || r.Admitted[0].PipelineRun != ns+"/high" {
			t.Fatalf("Release = %+v, %v; want high admitted", r, err)
		}
		if _, err := c.SetPolicy(ctx, repo.Key(), concurrency.Policy{Mode: "fifo"}); !errors.Is(err, concurrency.ErrInvalidArgument) {
			t.Fatalf("SetPolicy(fifo) = %v; want INVALID_ARGUMENT", err)
		}
	})
}

func TestANewerRunOfTheGroupEndsTheOlderOnesWait(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL})
		ctx := timeout(t, 60*time.Second)
		ns := testserver.Namespace("group")
		repo := repoOf(t, ns+"/app", 1)
		_, err := c.WaitForSlot(ctx, repo, ns+"/holder", concurrency.WaitOptions{})
		testserver.Must(t, err, "WaitForSlot on a free slot")
		base := time.Now()
		fail := make(chan error, 1)
		go func() {
			_, err := c.WaitForSlot(ctx, repo, ns+"/pr-3-a", concurrency.WaitOptions{
				Group: "pr-3", CreationTime: base, PollInterval: time.Minute})
			fail <- err
		}()
		awaitQueued(t, ctx, c, repo, 1)
		r, err := c.Submit(ctx, repo, ns+"/pr-3-b", concurrency.SubmitOptions{
			Group: "pr-3", CreationTime: base.Add(time.Minute)})
		if err != nil || r.Acquired || r.Position != 1 || r.WaitingFor == nil ||
			r.WaitingFor.Reason != "repository_limit" || r.WaitingFor.Ahead != 0 {
			t.Fatalf("the newer run's submit = %+v, %v; want queued first", r, err)
		}
		st, err := c.Status(ctx, repo.Key())
		if err != nil || len(st.Queued) != 1 || st.Queued[0].WaitingFor == nil ||
			st.Queued[0].WaitingFor.Limit != 1 || st.Queued[0].WaitingFor.InUse != 1 {
			t.Fatalf("status = %+v, %v; want what holds the queued run", st, err)
		}
		select {
		case err := <-fail:
			var e *concurrency.Error
			if !errors.Is(err, concurrency.ErrRunRemoved) || !errors.As(err, &e) ||
				e.Reason != "superseded" {
				t.Fatalf("the superseded wait ended with %v; want RUN_REMOVED (superseded)", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the superseded wait did not end within 30 s")
		}
		q, err := c.GetQueuedPipelineRuns(ctx, repo)
		if err != nil || len(q) != 1 || q[0] != ns+"/pr-3-b" {
			t.Fatalf("queue = %v, %v; want [pr-3-b]", q, err)
		}
	})
}

func TestKeepAliveRenewsUntilTheLeaseIsLost(t *testing.T) {
	srv := testserver.Start(t, []string{"PAC_MEMORY_LEASE_TTL=2s"})
	c := newClient(t, concurrency.Options{URL: srv.URL})
	ctx := timeout(t, 30*time.Second)
	repo := repoOf(t, "team/app", 1)
	r, err := c.Submit(ctx, repo, "team/pr-1", concurrency.SubmitOptions{})
	if err != nil || !r.Acquired {
		t.Fatalf("Submit = %+v, %v", r, err)
	}
	lost := c.KeepAlive(ctx, r.Lease, 0)
	time.Sleep(3500 * time.Millisecond) // past the 2 s TTL
	if n, err := c.GetCurrentSlots(ctx, repo); err != nil || n != 1 {
		t.Fatalf("after 3.5 s of a 2 s TTL the kept lease is gone: %d, %v", n, err)
	}
	select {
	case err := <-lost:
		t.Fatalf("KeepAlive reported %v while the lease was held", err)
	default:
	}
	_, err = c.Release(ctx, repo.Key(), "team/pr-1", r.Lease.LeaseID)
	testserver.Must(t, err, "Release")
	select {
	case err := <-lost:
		if !errors.Is(err, concurrency.ErrLeaseLost) {
			t.Fatalf("KeepAlive reported %v; want LEASE_LOST", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("KeepAlive did not report the released lease within 5 s")
	}

	// Without KeepAlive the lease expires.
	r, err = c.Submit(ctx, repo, "team/pr-2", concurrency.SubmitOptions{})
	if err != nil || !r.Acquired {
		t.Fatalf("Submit = %+v, %v", r, err)
	}
	time.Sleep(2500 * time.Millisecond)
	if _, err := c.RenewLease(ctx, r.Lease.LeaseID); !errors.Is(err, concurrency.ErrLeaseLost) {
		t.Fatalf("renewing an expired lease: %v; want LEASE_LOST", err)
	}
}

func TestManyGoroutinesOnTwoServersNeverExceedTheLimit(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		servers := []*testserver.Server{testserver.Start(t, b.Env)}
		if b.Name != "memory" { // memory servers do not share state
			servers = append(servers, testserver.Start(t, b.Env))
		}
		clients := make([]*concurrency.Client, len(servers))
		for i, s := range servers {
			clients[i] = newClient(t, concurrency.Options{URL: s.URL})
		}
		ctx := timeout(t, 120*time.Second)
		ns := testserver.Namespace("many")
		const limit, workers = 3, 24
		repo := repoOf(t, ns+"/app", limit)
		var holding, most, done atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for i := 0; i < workers; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c := clients[i%len(clients)]
				run := fmt.Sprintf("%s/pr-%d", ns, i)
				l, err := c.WaitForSlot(ctx, repo, run, concurrency.WaitOptions{})
				if err != nil {
					errs <- fmt.Errorf("%s: %w", run, err)
					return
				}
				n := holding.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(20 * time.Millisecond)
				holding.Add(-1)
				if _, err := c.Release(ctx, repo.Key(), run, l.LeaseID); err != nil {
					errs <- fmt.Errorf("release %s: %w", run, err)
					return
				}
				done.Add(1)
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if done.Load() != workers {
			t.Fatalf("%d of %d runs finished", done.Load(), workers)
		}
		if most.Load() > limit {
			t.Fatalf("%d runs held a slot at once; the limit is %d", most.Load(), limit)
		}
		if most.Load() < 2 {
			t.Fatalf("at most %d run at once: the runs did not overlap", most.Load())
		}
	})
}

// A server behind a proxy at a path prefix: every call and the watch go
// under the prefix.
func TestAPathPrefixReachesTheServerBehindAProxy(t *testing.T) {
	srv := testserver.Start(t, nil)
	target, err := url.Parse(srv.URL)
	testserver.Must(t, err, "url")
	proxy := httputil.NewSingleHostReverseProxy(target)
	var seen atomic.Int32
	front := httptest.NewServer(http.StripPrefix("/pac", http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			seen.Add(1)
			proxy.ServeHTTP(w, r)
		})))
	defer front.Close()
	c := newClient(t, concurrency.Options{URL: front.URL + "/pac/"})
	ctx := timeout(t, 30*time.Second)
	events := make(chan concurrency.Event, 10)
	w, err := c.Watch(ctx, "team/app", func(e concurrency.Event) { events <- e })
	testserver.Must(t, err, "Watch through the proxy")
	defer w.Stop()
	ok, lease, err := c.AcquireSlot(ctx, repoOf(t, "team/app", 1), "team/pr-1")
	if err != nil || !ok {
		t.Fatalf("AcquireSlot through the proxy = %v, %v", ok, err)
	}
	testserver.Must(t, c.ReleaseSlot(ctx, lease, "team/pr-1", "team/app"), "ReleaseSlot")
	for released := false; !released; {
		select {
		case e := <-events:
			released = e.Type == concurrency.EventReleased
		case <-time.After(10 * time.Second):
			t.Fatal("no released event through the proxy within 10 s")
		}
	}
	if seen.Load() < 3 {
		t.Fatalf("the proxy saw %d requests", seen.Load())
	}
}

// CancelRunning: a newer run of the group asks the running one to stop;
// its holder hears EventCancelRequested and sees CancelRequested on
// renewal, and the newer run is admitted when it releases.
func TestCancelRunningAsksTheGroupsRunningRunToStop(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL})
		ctx := timeout(t, 60*time.Second)
		ns := testserver.Namespace("cancel")
		repo := repoOf(t, ns+"/app", 1)
		old, err := c.WaitForSlot(ctx, repo, ns+"/old", concurrency.WaitOptions{Group: "pr-1"})
		testserver.Must(t, err, "WaitForSlot on a free slot")
		if _, err := c.Submit(ctx, repo, ns+"/x", concurrency.SubmitOptions{CancelRunning: true}); !errors.Is(err, concurrency.ErrInvalidArgument) {
			t.Fatalf("Submit(CancelRunning without a group) = %v; want INVALID_ARGUMENT", err)
		}
		events := make(chan concurrency.Event, 16)
		w, err := c.Watch(ctx, repo.Key(), func(ev concurrency.Event) { events <- ev })
		testserver.Must(t, err, "Watch")
		defer w.Stop()
		newer, err := c.Submit(ctx, repo, ns+"/new",
			concurrency.SubmitOptions{Group: "pr-1", CancelRunning: true})
		if err != nil || newer.Position != 1 {
			t.Fatalf("Submit(new) = %+v, %v; want position 1", newer, err)
		}
		for heard := false; !heard; {
			select {
			case ev := <-events:
				if ev.Type != concurrency.EventCancelRequested {
					continue
				}
				if ev.PipelineRun != ns+"/old" {
					t.Fatalf("cancel_requested for %q; want %s/old", ev.PipelineRun, ns)
				}
				heard = true
			case <-time.After(10 * time.Second):
				t.Fatal("no cancel_requested event within 10 s")
			}
		}
		renewed, err := c.RenewLease(ctx, old.LeaseID)
		if err != nil || !renewed.CancelRequested {
			t.Fatalf("RenewLease = %+v, %v; want CancelRequested", renewed, err)
		}
		// KeepAlive says so once, and goes on renewing.
		kaCtx, stopKeepAlive := context.WithCancel(ctx)
		told := c.KeepAlive(kaCtx, old, 20*time.Millisecond)
		if err := <-told; !errors.Is(err, concurrency.ErrCancelRequested) {
			t.Fatalf("KeepAlive said %v; want CANCEL_REQUESTED", err)
		}
		time.Sleep(100 * time.Millisecond)
		stopKeepAlive()
		if err, open := <-told; open {
			t.Fatalf("KeepAlive said %v after CANCEL_REQUESTED; want nothing more", err)
		}
		testserver.Must(t, c.ReleaseSlot(ctx, old.LeaseID, ns+"/old", repo.Key()), "ReleaseSlot")
		st, err := c.Status(ctx, repo.Key())
		if err != nil || len(st.Running) != 1 || st.Running[0].PipelineRun != ns+"/new" ||
			st.Running[0].CancelRequested {
			t.Fatalf("Status = %+v, %v; want %s/new running, not asked to stop", st, err, ns)
		}
	})
}

// A shared limit holds a run of a second repository until the first
// releases; ListSharedLimits shows it.
func TestSharedLimitHoldsRunsAcrossRepositories(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL})
		ctx := timeout(t, 60*time.Second)
		ns := testserver.Namespace("shared")
		team := ns + "-team"
		testserver.Must(t, c.SetSharedLimit(ctx, team, 1), "SetSharedLimit")
		if err := c.SetSharedLimit(ctx, team, -1); !errors.Is(err, concurrency.ErrInvalidArgument) {
			t.Fatalf("SetSharedLimit(-1) = %v; want INVALID_ARGUMENT", err)
		}
		one, two := repoOf(t, ns+"/one", 5), repoOf(t, ns+"/two", 5)
		for _, r := range []*concurrency.Repository{one, two} {
			p, err := c.SetPolicy(ctx, r.Key(), concurrency.Policy{SharedLimits: []string{team}})
			testserver.Must(t, err, "SetPolicy")
			if len(p.SharedLimits) != 1 || p.SharedLimits[0] != team {
				t.Fatalf("SetPolicy answered %+v; want shared limit %s", p, team)
			}
		}
		a, err := c.Submit(ctx, one, ns+"/a", concurrency.SubmitOptions{})
		if err != nil || !a.Acquired {
			t.Fatalf("Submit(a) = %+v, %v; want acquired", a, err)
		}
		bRun, err := c.Submit(ctx, two, ns+"/b", concurrency.SubmitOptions{})
		if err != nil || bRun.Acquired || bRun.Position != 1 {
			t.Fatalf("Submit(b) = %+v, %v; want queued at 1 (team full)", bRun, err)
		}
		list, err := c.ListSharedLimits(ctx)
		testserver.Must(t, err, "ListSharedLimits")
		found := false
		for _, s := range list {
			if s.Name == team {
				found = true
				if s.Limit == nil || *s.Limit != 1 || s.Running != 1 || s.Queued != 1 ||
					len(s.Members) != 2 {
					t.Fatalf("ListSharedLimits: %+v; want limit 1, 1 running, 1 queued, 2 members", s)
				}
			}
		}
		if !found {
			t.Fatalf("ListSharedLimits: %s missing", team)
		}
		_, err = c.Release(ctx, one.Key(), ns+"/a", a.Lease.LeaseID)
		testserver.Must(t, err, "Release(a)")
		deadline := time.Now().Add(10 * time.Second)
		for {
			again, err := c.Submit(ctx, two, ns+"/b", concurrency.SubmitOptions{})
			testserver.Must(t, err, "Submit(b) again")
			if again.Acquired {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("b was not admitted within 10 s of a's release")
			}
			time.Sleep(20 * time.Millisecond)
		}
		testserver.Must(t, c.DeleteSharedLimit(ctx, team), "DeleteSharedLimit")
	})
}
