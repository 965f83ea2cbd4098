// The specification's ConcurrencyDriver method set over the HTTP API:
// AcquireSlot, ReleaseSlot, RenewLease, the reads, SetRepositoryLimit,
// CleanupRepository, and the richer calls they are built on (Submit,
// Release, Status).

package concurrency

import (
	"context"
	"net/url"
	"strconv"
	"time"
)

// SubmitOptions refine a submit (POST .../runs).
type SubmitOptions struct {
	// CreationTime orders the queue (oldest first); zero: the time the
	// backend first sees the run.
	CreationTime time.Time
	// NoQueue takes a free slot or leaves nothing behind.
	NoQueue bool
	// Started adopts a run that is already running (after a restart): it
	// takes a slot even above the limit. Needs an admin token.
	Started bool
	// Group is a supersede group (a pull request, a branch): of its queued
	// runs only the newest stays, and an older one submitted later fails
	// with ErrRunRemoved (docs/policies.md).
	Group string
	// MaxQueueTime is the longest the run may wait in the queue: past it
	// the run leaves the queue, and its submits fail with ErrRunRemoved
	// (reason "timed-out"). Zero: the repository's (Policy).
	MaxQueueTime time.Duration
	// Priority places the run when the repository's queue mode is
	// "priority": higher first.
	Priority int32
	// CancelRunning (with a Group): a new submit also asks the group's
	// other running runs to stop. Their holders see Lease.CancelRequested
	// when they renew, and an EventCancelRequested on a watch; their slots
	// stay held until they release (docs/policies.md).
	CancelRunning bool
}

// Submit asks for a slot for the run "namespace/name" in repo: the answer
// holds a lease, or the run's place in the queue. Submitting again is
// safe: a queued run keeps its place, an admitted run gets its lease back.
// repo.ConcurrencyLimit, when set, is recorded as the repository's limit.
func (c *Client) Submit(ctx context.Context, repo *Repository, pipelineRunKey string,
	opts SubmitOptions) (*AcquireResult, error) {
	const op = "Submit"
	if repo == nil {
		return nil, invalidArgument(op, "repository: is nil")
	}
	if _, _, err := splitKey(op, "repository", repo.Key()); err != nil {
		return nil, err
	}
	if _, _, err := splitKey(op, "pipeline_run", pipelineRunKey); err != nil {
		return nil, err
	}
	body := map[string]any{"pipeline_run": pipelineRunKey}
	if repo.ConcurrencyLimit != nil {
		if *repo.ConcurrencyLimit < 0 {
			return nil, invalidArgument(op,
				"concurrency_limit: must not be negative (got %d)", *repo.ConcurrencyLimit)
		}
		body["concurrency_limit"] = *repo.ConcurrencyLimit
	}
	if opts.Group != "" {
		body["group"] = opts.Group
	}
	if opts.MaxQueueTime < 0 {
		return nil, invalidArgument(op, "max_queue_seconds: must be positive (got %s)",
			opts.MaxQueueTime)
	}
	if opts.MaxQueueTime > 0 {
		body["max_queue_seconds"] = opts.MaxQueueTime.Seconds()
	}
	if opts.Priority != 0 {
		body["priority"] = opts.Priority
	}
	if opts.CancelRunning {
		if opts.Group == "" {
			return nil, invalidArgument(op, "cancel_running: needs a group")
		}
		body["cancel_running"] = true
	}
	if !opts.CreationTime.IsZero() {
		body["creation_time"] = opts.CreationTime.UTC().Format(time.RFC3339Nano)
	}
	if opts.NoQueue {
		body["enqueue"] = false
	}
	if opts.Started {
		body["state"] = "started"
	}
	var out AcquireResult
	err := c.call(ctx, op, "POST",
		c.pathOf("v1", "repositories", repo.Namespace, repo.Name, "runs"), "", body, &out)
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// AcquireSlot is the specification's call: it takes a slot for the run
// if one is free and no older run waits, else queues the run. It returns
// whether the run holds a slot, and its lease id.
func (c *Client) AcquireSlot(ctx context.Context, repo *Repository,
	pipelineRunKey string) (bool, string, error) {
	r, err := c.Submit(ctx, repo, pipelineRunKey, SubmitOptions{})
	if err != nil {
		return false, "", err
	}
	if !r.Acquired || r.Lease == nil {
		return false, "", nil
	}
	return true, r.Lease.LeaseID, nil
}

// Release frees the run's slot (or takes it out of the queue) and admits
// the head of the queue in the same step. With a leaseID only that lease
// is released, so a stale holder cannot free a newer lease of the run.
// Releasing something unknown is not an error (Released is false).
func (c *Client) Release(ctx context.Context, repoKey, pipelineRunKey,
	leaseID string) (*ReleaseResult, error) {
	const op = "Release"
	ns, name, err := splitKey(op, "repository", repoKey)
	if err != nil {
		return nil, err
	}
	runNs, runName, err := splitKey(op, "pipeline_run", pipelineRunKey)
	if err != nil {
		return nil, err
	}
	query := ""
	if leaseID != "" {
		query = url.Values{"lease_id": {leaseID}}.Encode()
	}
	var out ReleaseResult
	err = c.call(ctx, op, "DELETE",
		c.pathOf("v1", "repositories", ns, name, "runs", runNs, runName), query, nil, &out)
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// ReleaseSlot is the specification's call (argument order as there).
func (c *Client) ReleaseSlot(ctx context.Context, leaseID, pipelineRunKey,
	repoKey string) error {
	_, err := c.Release(ctx, repoKey, pipelineRunKey, leaseID)
	return err
}

// RenewLease extends the lease by the server's TTL from now. A lease that
// expired or was released fails with ErrLeaseLost: its holder no longer
// has a slot.
func (c *Client) RenewLease(ctx context.Context, leaseID string) (*Lease, error) {
	const op = "RenewLease"
	if leaseID == "" {
		return nil, invalidArgument(op, "lease_id: is empty")
	}
	var out Lease
	if err := c.call(ctx, op, "POST", c.pathOf("v1", "leases", leaseID, "renew"),
		"", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Status reads the repository's limit, running runs and queue as one
// consistent state.
func (c *Client) Status(ctx context.Context, repoKey string) (*RepositoryStatus, error) {
	const op = "Status"
	ns, name, err := splitKey(op, "repository", repoKey)
	if err != nil {
		return nil, err
	}
	var out RepositoryStatus
	if err := c.call(ctx, op, "GET", c.pathOf("v1", "repositories", ns, name),
		"", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListRepositories returns the status of every repository the backend
// holds a record of, in key order; a non-empty namespace lists only its.
// It reads them in pages of 500 (one request each).
func (c *Client) ListRepositories(ctx context.Context,
	namespace string) ([]RepositoryStatus, error) {
	var all []RepositoryStatus
	after := ""
	for {
		page, next, err := c.ListRepositoriesPage(ctx, namespace, 500, after)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" {
			return all, nil
		}
		after = next
	}
}

// ListRepositoriesPage returns at most limit repositories (1 to 10,000)
// with keys after `after` ("" for the first page), and the `after` of the
// next page ("" when this one is the last).
func (c *Client) ListRepositoriesPage(ctx context.Context, namespace string,
	limit int, after string) ([]RepositoryStatus, string, error) {
	q := url.Values{"limit": {strconv.Itoa(limit)}}
	if namespace != "" {
		q.Set("namespace", namespace)
	}
	if after != "" {
		q.Set("after", after)
	}
	var out struct {
		Repositories []RepositoryStatus `json:"repositories"`
		Next         string             `json:"next"`
	}
	if err := c.call(ctx, "ListRepositories", "GET", c.pathOf("v1", "repositories"),
		q.Encode(), nil, &out); err != nil {
		return nil, "", err
	}
	return out.Repositories, out.Next, nil
}

// GetCurrentSlots is the number of slots in use.
func (c *Client) GetCurrentSlots(ctx context.Context, repo *Repository) (int, error) {
	s, err := c.Status(ctx, repo.Key())
	if err != nil {
		return 0, err
	}
	return s.InUse, nil
}

// GetRunningPipelineRuns is the keys of the runs holding a slot, oldest
// grant first.
func (c *Client) GetRunningPipelineRuns(ctx context.Context,
	repo *Repository) ([]string, error) {
	s, err := c.Status(ctx, repo.Key())
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(s.Running))
	for _, l := range s.Running {
		keys = append(keys, l.PipelineRun)
	}
	return keys, nil
}

// GetQueue is the queue in admission order.
func (c *Client) GetQueue(ctx context.Context, repoKey string) ([]QueueEntry, error) {
	s, err := c.Status(ctx, repoKey)
	if err != nil {
		return nil, err
	}
	return s.Queued, nil
}

// GetQueuedPipelineRuns is the keys of the queued runs in admission order.
func (c *Client) GetQueuedPipelineRuns(ctx context.Context,
	repo *Repository) ([]string, error) {
	q, err := c.GetQueue(ctx, repo.Key())
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(q))
	for _, e := range q {
		keys = append(keys, e.PipelineRun)
	}
	return keys, nil
}

// SetRepositoryLimit records repo.ConcurrencyLimit (0: unlimited).
// Lowering evicts nobody; raising admits queued runs at once, returned.
func (c *Client) SetRepositoryLimit(ctx context.Context, repo *Repository) ([]Lease, error) {
	const op = "SetRepositoryLimit"
	if repo == nil || repo.ConcurrencyLimit == nil {
		return nil, invalidArgument(op, "concurrency_limit: is not set")
	}
	if *repo.ConcurrencyLimit < 0 {
		return nil, invalidArgument(op,
			"concurrency_limit: must not be negative (got %d)", *repo.ConcurrencyLimit)
	}
	if _, _, err := splitKey(op, "repository", repo.Key()); err != nil {
		return nil, err
	}
	var out struct {
		Admitted []Lease `json:"admitted"`
	}
	err := c.call(ctx, op, "PUT", c.pathOf("v1", "repositories", repo.Namespace, repo.Name),
		"", map[string]any{"concurrency_limit": *repo.ConcurrencyLimit}, &out)
	if err != nil {
		return nil, err
	}
	return out.Admitted, nil
}

// CleanupRepository removes every lease, queue entry and state of the
// repository.
func (c *Client) CleanupRepository(ctx context.Context, repo *Repository) error {
	const op = "CleanupRepository"
	if repo == nil {
		return invalidArgument(op, "repository: is nil")
	}
	if _, _, err := splitKey(op, "repository", repo.Key()); err != nil {
		return err
	}
	return c.call(ctx, op, "DELETE",
		c.pathOf("v1", "repositories", repo.Namespace, repo.Name), "", nil, nil)
}

// ClearQueue removes every queued run of the repository and returns them
// in admission order; running runs keep their slots. A removed run's
// submissions fail with ErrRunRemoved until it is released by key
// (docs/policies.md).
func (c *Client) ClearQueue(ctx context.Context, repoKey string) ([]string, error) {
	const op = "ClearQueue"
	ns, name, err := splitKey(op, "repository", repoKey)
	if err != nil {
		return nil, err
	}
	var out struct {
		Removed []string `json:"removed"`
	}
	if err := c.call(ctx, op, "DELETE",
		c.pathOf("v1", "repositories", ns, name, "queue"), "", nil, &out); err != nil {
		return nil, err
	}
	return out.Removed, nil
}

// Policy is what a repository's queue does beyond its limit
// (docs/policies.md).
type Policy struct {
	// MaxQueueTime is the longest a run may wait in the repository's queue
	// before it leaves (reason "timed-out"), unless the run has its own
	// (SubmitOptions.MaxQueueTime). Zero: no limit.
	MaxQueueTime time.Duration
	// Mode is the queue's order: "oldest-first" (also ""), "newest-first"
	// or "priority". A change reorders the queue at once.
	Mode string
	// SharedLimits are the shared limits the repository draws from
	// (docs/policies.md, "Shared limits"; SetSharedLimit): a run is
	// admitted only when each of them has a free slot too. At most 8.
	SharedLimits []string
}

type policyJSON struct {
	MaxQueueSeconds *float64 `json:"max_queue_seconds"`
	QueueMode       string   `json:"queue_mode"`
	SharedLimits    []string `json:"shared_limits"`
}

func (p policyJSON) policy() Policy {
	out := Policy{Mode: p.QueueMode}
	if len(p.SharedLimits) > 0 {
		out.SharedLimits = p.SharedLimits
	}
	if p.MaxQueueSeconds != nil {
		out.MaxQueueTime = time.Duration(*p.MaxQueueSeconds * float64(time.Second)).Round(time.Microsecond)
	}
	return out
}

// SetPolicy records the repository's policy (every field) for every server
// sharing the backend; a zero Policy forgets it. Live: runs queued longer
// than a new limit leave the queue, and a new mode reorders it. Needs an
// admin token.
func (c *Client) SetPolicy(ctx context.Context, repoKey string, p Policy) (Policy, error) {
	const op = "SetPolicy"
	ns, name, err := splitKey(op, "repository", repoKey)
	if err != nil {
		return Policy{}, err
	}
	if p.MaxQueueTime < 0 {
		return Policy{}, invalidArgument(op, "max_queue_seconds: must be positive (got %s)",
			p.MaxQueueTime)
	}
	body := map[string]any{"max_queue_seconds": nil, "queue_mode": nil, "shared_limits": nil}
	if p.MaxQueueTime > 0 {
		body["max_queue_seconds"] = p.MaxQueueTime.Seconds()
	}
	if len(p.SharedLimits) > 0 {
		body["shared_limits"] = p.SharedLimits
	}
	if p.Mode != "" {
		body["queue_mode"] = p.Mode
	}
	var out policyJSON
	if err := c.call(ctx, op, "PUT",
		c.pathOf("v1", "repositories", ns, name, "policy"), "", body, &out); err != nil {
		return Policy{}, err
	}
	return out.policy(), nil
}

// GetPolicy is the repository's recorded policy (a zero Policy if none).
func (c *Client) GetPolicy(ctx context.Context, repoKey string) (Policy, error) {
	const op = "GetPolicy"
	ns, name, err := splitKey(op, "repository", repoKey)
	if err != nil {
		return Policy{}, err
	}
	var out policyJSON
	if err := c.call(ctx, op, "GET",
		c.pathOf("v1", "repositories", ns, name, "policy"), "", nil, &out); err != nil {
		return Policy{}, err
	}
	return out.policy(), nil
}

// Version is the server's version and backend driver.
func (c *Client) Version(ctx context.Context) (*VersionInfo, error) {
	var out VersionInfo
	if err := c.call(ctx, "Version", "GET", c.pathOf("v1", "version"), "", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SetRepositoryState records the repository's free-form state (1 to 50
// characters).
func (c *Client) SetRepositoryState(ctx context.Context, repo *Repository, state string) error {
	const op = "SetRepositoryState"
	if repo == nil {
		return invalidArgument(op, "repository: is nil")
	}
	return c.setState(ctx, op, "repositories", "repository", repo.Key(), state)
}

// GetRepositoryState is the repository's state; ErrNotFound when none was
// set.
func (c *Client) GetRepositoryState(ctx context.Context, repoKey string) (string, error) {
	return c.getState(ctx, "GetRepositoryState", "repositories", "repository", repoKey)
}

// SetPipelineRunState records the run's free-form state (1 to 50
// characters).
func (c *Client) SetPipelineRunState(ctx context.Context, pipelineRunKey, state string) error {
	return c.setState(ctx, "SetPipelineRunState", "pipelineruns", "pipeline_run",
		pipelineRunKey, state)
}

// GetPipelineRunState is the run's state; ErrNotFound when none was set.
func (c *Client) GetPipelineRunState(ctx context.Context, pipelineRunKey string) (string, error) {
	return c.getState(ctx, "GetPipelineRunState", "pipelineruns", "pipeline_run",
		pipelineRunKey)
}

func (c *Client) setState(ctx context.Context, op, collection, field, key, state string) error {
	ns, name, err := splitKey(op, field, key)
	if err != nil {
		return err
	}
	return c.call(ctx, op, "PUT", c.pathOf("v1", collection, ns, name, "state"), "",
		map[string]any{"state": state}, nil)
}

func (c *Client) getState(ctx context.Context, op, collection, field, key string) (string, error) {
	ns, name, err := splitKey(op, field, key)
	if err != nil {
		return "", err
	}
	var out struct {
		State string `json:"state"`
	}
	if err := c.call(ctx, op, "GET", c.pathOf("v1", collection, ns, name, "state"), "",
		nil, &out); err != nil {
		return "", err
	}
	return out.State, nil
}

// SharedLimit is a limit many repositories draw from, as ListSharedLimits
// shows it (docs/policies.md, "Shared limits").
type SharedLimit struct {
	Name string `json:"name"`
	// Limit is nil for a name members give that no limit is set for; 0: no
	// limit.
	Limit   *int     `json:"limit"`
	Running int64    `json:"running"`
	Queued  int64    `json:"queued"`
	Members []string `json:"members"`
}

// SetSharedLimit sets a shared limit (0: no limit) for every server sharing
// the backend; raising it admits the members' queued runs that now fit,
// lowering it evicts nobody. Repositories join it with
// Policy.SharedLimits. Needs an admin token over every namespace.
func (c *Client) SetSharedLimit(ctx context.Context, name string, limit int) error {
	const op = "SetSharedLimit"
	if limit < 0 {
		return invalidArgument(op, "limit: must be 0 (no limit) or more (got %d)", limit)
	}
	return c.call(ctx, op, "PUT", c.pathOf("v1", "shared-limits", name), "",
		map[string]any{"limit": limit}, nil)
}

// DeleteSharedLimit forgets a shared limit: its members are no longer held
// by it. Deleting one never set is not an error.
func (c *Client) DeleteSharedLimit(ctx context.Context, name string) error {
	return c.call(ctx, "DeleteSharedLimit", "DELETE",
		c.pathOf("v1", "shared-limits", name), "", nil, nil)
}

// ListSharedLimits is every shared limit that is set or named by a member,
// by name, with its members and their counts.
func (c *Client) ListSharedLimits(ctx context.Context) ([]SharedLimit, error) {
	var out struct {
		SharedLimits []SharedLimit `json:"shared_limits"`
	}
	if err := c.call(ctx, "ListSharedLimits", "GET", c.pathOf("v1", "shared-limits"), "",
		nil, &out); err != nil {
		return nil, err
	}
	return out.SharedLimits, nil
}
