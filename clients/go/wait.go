// Helpers of a controller's loop: WaitForSlot (submit, then wait for the
// admission with a watch, re-submitting on each event) and KeepAlive
// (renew a lease until its work is done).

package concurrency

import (
	"context"
	"errors"
	"time"
)

// WaitOptions refine WaitForSlot.
type WaitOptions struct {
	// CreationTime orders the queue (see SubmitOptions).
	CreationTime time.Time
	// Group is the run's supersede group (see SubmitOptions).
	Group string
	// MaxQueueTime is the run's queue time limit (see SubmitOptions).
	MaxQueueTime time.Duration
	// Priority is the run's priority (see SubmitOptions).
	Priority int32
	// CancelRunning asks the group's running runs to stop (see
	// SubmitOptions).
	CancelRunning bool
	// OnQueued is told the run's position when it is first queued and
	// each time the position changes.
	OnQueued func(position int)
	// PollInterval: the run is re-submitted this often even without an
	// event (default 5 s), which also covers a server that refused the
	// watch (all its watch places taken).
	PollInterval time.Duration
	// KeepQueued leaves the run queued when ctx ends. By default it is
	// taken out of the queue, so that a run nobody waits for is not
	// admitted.
	KeepQueued bool
}

// WaitForSlot submits the run and returns its lease once it holds a slot.
// It waits as long as ctx allows: when ctx ends first the run is taken out
// of the queue (unless opts.KeepQueued) and the error is of code
// DeadlineExceeded or Cancelled (errors.Is(err, context.DeadlineExceeded)
// holds as well).
func (c *Client) WaitForSlot(ctx context.Context, repo *Repository, pipelineRunKey string,
	opts WaitOptions) (*Lease, error) {
	const op = "WaitForSlot"
	if repo == nil {
		return nil, invalidArgument(op, "repository: is nil")
	}
	poll := opts.PollInterval
	if poll <= 0 {
		poll = 5 * time.Second
	}
	// The watch first, so that no release between the submit and the
	// watch goes unheard.
	wake := make(chan struct{}, 1)
	notify := func(Event) {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	watch, err := c.Watch(ctx, repo.Key(), notify)
	switch {
	case err == nil:
		defer watch.Stop()
	case errors.Is(err, ErrResourceExhausted), errors.Is(err, ErrUnavailable):
		// Re-submitting every PollInterval still gets the slot.
	default:
		return nil, err
	}
	submitOpts := SubmitOptions{CreationTime: opts.CreationTime, Group: opts.Group,
		MaxQueueTime: opts.MaxQueueTime, Priority: opts.Priority,
		CancelRunning: opts.CancelRunning}
	lastPosition := -1
	for {
		// Each submit runs to its answer, not to ctx's end: one abandoned
		// in flight could reach the server after giveUp's release and
		// queue the run again with nobody waiting for it.
		submitCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := c.Submit(submitCtx, repo, pipelineRunKey, submitOpts)
		cancel()
		switch {
		case err == nil && ctx.Err() != nil:
			// Time ran out during the submit: as below (an admitted run
			// gives its slot back).
			return nil, c.giveUp(ctx, op, repo, pipelineRunKey, opts.KeepQueued)
		case err == nil:
			if r.Acquired && r.Lease != nil {
				return r.Lease, nil
			}
			if r.Position != lastPosition {
				lastPosition = r.Position
				if opts.OnQueued != nil {
					opts.OnQueued(r.Position)
				}
			}
		case ctx.Err() != nil:
			return nil, c.giveUp(ctx, op, repo, pipelineRunKey, opts.KeepQueued)
		case !retryable(err):
			return nil, err
		}
		t := time.NewTimer(poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, c.giveUp(ctx, op, repo, pipelineRunKey, opts.KeepQueued)
		case <-wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// giveUp takes the run out of the queue (a run admitted meanwhile gives
// its slot back) and returns the context's error. It releases even when no
// submit was answered: one that failed may still have queued the run, and
// releasing an unknown run is not an error.
func (c *Client) giveUp(ctx context.Context, op string, repo *Repository,
	pipelineRunKey string, keep bool) error {
	if !keep {
		cleanup, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = c.Release(cleanup, repo.Key(), pipelineRunKey, "")
	}
	return contextError(op, ctx.Err())
}

// KeepAlive renews the lease until ctx ends: every interval, or when
// interval is 0 each time a third of its time to live has passed. The channel
// receives one error and is closed if the lease is lost (ErrLeaseLost:
// released by someone else, or expired because no renewal reached the
// server in time): the run no longer holds its slot and should stop. It
// is closed without a value when ctx ends. A renewal that fails for a
// reason that may pass (the server unreachable) is tried again every
// second while the lease may still be alive. When a renewal says that a
// newer run of the lease's group asked its run to stop
// (Lease.CancelRequested), the channel receives ErrCancelRequested, once,
// and stays open: the renewals go on, since the slot is held until the
// caller stops its run and releases.
func (c *Client) KeepAlive(ctx context.Context, lease *Lease, interval time.Duration) <-chan error {
	lost := make(chan error, 2)
	go func() {
		defer close(lost)
		expires := lease.ExpiresAt
		period := func(expiresAt time.Time) time.Duration {
			if interval > 0 {
				return interval
			}
			if d := time.Until(expiresAt) / 3; d > 100*time.Millisecond {
				return d
			}
			return 100 * time.Millisecond
		}
		next := period(expires)
		asked := false
		for {
			t := time.NewTimer(next)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			l, err := c.RenewLease(ctx, lease.LeaseID)
			switch {
			case err == nil:
				expires = l.ExpiresAt
				next = period(expires)
				if l.CancelRequested && !asked {
					asked = true
					lost <- &Error{Code: CodeCancelRequested, Op: "KeepAlive",
						Message: "a newer run of its group asked " + l.PipelineRun + " to stop"}
				}
			case ctx.Err() != nil:
				return
			case errors.Is(err, ErrLeaseLost):
				lost <- err
				return
			case time.Now().After(expires):
				lost <- &Error{Code: CodeLeaseLost, Op: "KeepAlive", Err: err,
					Message: "the lease expired while no renewal reached the server: " + err.Error()}
				return
			default:
				next = time.Second
			}
		}
	}()
	return lost
}
