// Command controller is an example of a controller's loop on the Go
// client: it submits a number of PipelineRuns of one repository, and for
// each one waits for its admission, keeps its lease alive while the run
// "works", and releases the slot when done, which admits the next run.
//
//	go run ./examples/controller -server http://127.0.0.1:8080 \
//	    -repo demo/app -limit 2 -runs 5 -work 2s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	concurrency "github.com/pac-concurrency/pac-concurrency/clients/go"
)

type config struct {
	server, tokenFile, caFile string
	repo                      string
	limit, runs               int
	work                      time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.server, "server", "http://127.0.0.1:8080", "URL of pac-concurrency serve")
	flag.StringVar(&cfg.tokenFile, "token-file", "", "file holding the bearer token")
	flag.StringVar(&cfg.caFile, "ca-file", "", "CA that verifies an https server")
	flag.StringVar(&cfg.repo, "repo", "demo/app", "repository (namespace/name)")
	flag.IntVar(&cfg.limit, "limit", 2, "the repository's concurrency limit")
	flag.IntVar(&cfg.runs, "runs", 5, "how many PipelineRuns to submit")
	flag.DurationVar(&cfg.work, "work", 2*time.Second, "how long each run works")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "controller:", err)
		os.Exit(1)
	}
}

// run is the controller: every run goes through submit, wait, renew and
// release.
func run(ctx context.Context, cfg config, out io.Writer) error {
	client, err := concurrency.New(concurrency.Options{
		URL: cfg.server, TokenFile: cfg.tokenFile, CAFile: cfg.caFile})
	if err != nil {
		return err
	}
	defer client.Close()
	repo, err := concurrency.NewRepository(cfg.repo, cfg.limit)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(out, format+"\n", args...)
	}
	var wg sync.WaitGroup
	errs := make(chan error, cfg.runs)
	created := time.Now()
	for i := 1; i <= cfg.runs; i++ {
		runKey := fmt.Sprintf("%s/pr-%d", repo.Namespace, i)
		// The order of creation is the order of admission.
		opts := concurrency.WaitOptions{
			CreationTime: created.Add(time.Duration(i) * time.Millisecond),
			OnQueued:     func(p int) { say("%s queued at position %d", runKey, p) },
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := one(ctx, client, repo, runKey, opts, cfg.work, say); err != nil {
				errs <- fmt.Errorf("%s: %w", runKey, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	var first error
	failed := 0
	for err := range errs {
		if first == nil {
			first = err
		}
		failed++
	}
	if failed > 1 {
		return fmt.Errorf("%d runs failed; the first: %w", failed, first)
	}
	return first
}

func one(ctx context.Context, client *concurrency.Client, repo *concurrency.Repository,
	runKey string, opts concurrency.WaitOptions, work time.Duration,
	say func(string, ...any)) error {
	lease, err := client.WaitForSlot(ctx, repo, runKey, opts)
	if err != nil {
		return err
	}
	say("%s admitted (fencing token %d)", runKey, lease.FencingToken)
	workCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	lost := client.KeepAlive(workCtx, lease, 0)
	select {
	case <-time.After(work): // the PipelineRun runs
	case err := <-lost:
		if !errors.Is(err, concurrency.ErrCancelRequested) {
			return fmt.Errorf("stopped: %w", err) // the slot is gone
		}
		// A newer run of its group was submitted with CancelRunning: the
		// slot is still this run's; stop it and release.
		say("%s asked to stop by a newer run of its group", runKey)
	case <-ctx.Done():
	}
	cancel()
	say("%s finished: releasing its slot", runKey)
	// Release even when ctx ended, so that the slot is not held until
	// its lease expires.
	releaseCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	r, err := client.Release(releaseCtx, repo.Key(), runKey, lease.LeaseID)
	if err != nil {
		return err
	}
	for _, next := range r.Admitted {
		say("%s released: %s admitted in its place", runKey, next.PipelineRun)
	}
	return ctx.Err()
}
