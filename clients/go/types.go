// The values the API exchanges (docs/api.md, "Endpoints"), and the
// Repository a controller describes its repository with.

package concurrency

import (
	"fmt"
	"strings"
	"time"
)

// Repository is what the specification's v1alpha1.Repository gives a
// driver: its key and its concurrency limit.
type Repository struct {
	Namespace string
	Name      string
	// ConcurrencyLimit is the repository's limit (0: unlimited). Nil: the
	// limit the server has recorded is kept.
	ConcurrencyLimit *int
}

// NewRepository returns the repository of key "namespace/name" with the
// given limit (negative: none given, the recorded one is kept).
func NewRepository(key string, limit int) (*Repository, error) {
	ns, name, err := splitKey("NewRepository", "repository", key)
	if err != nil {
		return nil, err
	}
	r := &Repository{Namespace: ns, Name: name}
	if limit >= 0 {
		r.ConcurrencyLimit = &limit
	}
	return r, nil
}

// Key is "namespace/name".
func (r *Repository) Key() string { return r.Namespace + "/" + r.Name }

// Lease is a slot granted to a PipelineRun.
type Lease struct {
	LeaseID      string    `json:"lease_id"`
	Repository   string    `json:"repository"`
	PipelineRun  string    `json:"pipeline_run"`
	AcquiredAt   time.Time `json:"acquired_at"`
	ExpiresAt    time.Time `json:"expires_at"`
	FencingToken int64     `json:"fencing_token"`
	// CancelRequested: a newer run of its group asked this run to stop
	// (SubmitOptions.CancelRunning). Its holder should stop the run and
	// release; the slot stays held until then.
	CancelRequested bool `json:"cancel_requested"`
	// RunningSeconds is set in a repository's status.
	RunningSeconds float64 `json:"running_seconds,omitempty"`
}

// AcquireResult answers a submit: a lease, or the run's place in the queue.
type AcquireResult struct {
	Repository  string `json:"repository"`
	PipelineRun string `json:"pipeline_run"`
	Acquired    bool   `json:"acquired"`
	// Position in the queue (1 = next); 0 when admitted, or when not
	// queued (SubmitOptions.NoQueue).
	Position int    `json:"position"`
	Lease    *Lease `json:"lease,omitempty"`
	// WaitingFor says what holds a queued run: Reason and Ahead, and for
	// a shared limit its name and counts.
	WaitingFor *WaitingFor `json:"waiting_for,omitempty"`
	// Admitted lists other runs this call admitted (a raised limit).
	Admitted []Lease `json:"admitted"`
}

// ReleaseResult answers a release.
type ReleaseResult struct {
	Repository  string  `json:"repository"`
	PipelineRun string  `json:"pipeline_run"`
	Released    bool    `json:"released"`
	Dequeued    bool    `json:"dequeued"`
	Admitted    []Lease `json:"admitted"`
}

// QueueEntry is a waiting run.
type QueueEntry struct {
	PipelineRun    string    `json:"pipeline_run"`
	Position       int       `json:"position"`
	CreationTime   time.Time `json:"creation_time"`
	EnqueuedAt     time.Time `json:"enqueued_at"`
	WaitingSeconds float64   `json:"waiting_seconds"`
	// Priority is the run's (SubmitOptions.Priority).
	Priority int `json:"priority"`
	// WaitingFor says what holds the run (nil from a server that does not
	// say).
	WaitingFor *WaitingFor `json:"waiting_for,omitempty"`
}

// WaitingFor is what holds a queued run (docs/policies.md, "Why a run
// waits"): today always the repository's limit ("repository_limit"),
// directly or through the Ahead runs queued before it. Limit and InUse
// come with a status, not with a submit's answer.
type WaitingFor struct {
	Reason string `json:"reason"`
	Ahead  int    `json:"ahead"`
	Limit  int    `json:"limit,omitempty"`
	InUse  int    `json:"in_use,omitempty"`
	// With Reason "shared_limit": the full shared limit, its members'
	// queued runs, and (in a status or a listing) how many of them go
	// before this run: Ahead and the other members' runs queued earlier.
	SharedLimit        string `json:"shared_limit,omitempty"`
	Queued             int    `json:"queued,omitempty"`
	AheadInSharedLimit int    `json:"ahead_in_shared_limit,omitempty"`
}

// RepositoryStatus is one consistent state of a repository.
type RepositoryStatus struct {
	Repository string `json:"repository"`
	// ConcurrencyLimit is nil when the backend holds no limit for it.
	ConcurrencyLimit *int `json:"concurrency_limit"`
	InUse            int  `json:"in_use"`
	QueueDepth       int  `json:"queue_depth"`
	// QueueMode is the order Queued is in ("oldest-first",
	// "newest-first", "priority").
	QueueMode string       `json:"queue_mode"`
	Running   []Lease      `json:"running"`
	Queued    []QueueEntry `json:"queued"`
}

// EventType says what changed in a watched repository.
type EventType string

// The event types. EventResync is also sent by the client when its stream
// was re-established: events may have been missed, so re-read the state.
const (
	EventReleased     EventType = "released"
	EventExpired      EventType = "expired"
	EventAdmitted     EventType = "admitted"
	EventLimitChanged EventType = "limit_changed"
	EventCleaned      EventType = "cleaned"
	EventResync       EventType = "resync"
	// EventRemoved: a queued run left the queue without a slot
	// (Event.Reason: "cleared").
	EventRemoved EventType = "removed"
	// EventCancelRequested: a running run was asked to stop by a newer
	// run of its group (SubmitOptions.CancelRunning).
	EventCancelRequested EventType = "cancel_requested"
)

// Event is a change of a watched repository.
type Event struct {
	Type        EventType `json:"type"`
	Repository  string    `json:"repository"`
	PipelineRun string    `json:"pipeline_run"`
	Reason      string    `json:"reason,omitempty"` // EventRemoved's
}

// VersionInfo is the server's version and driver.
type VersionInfo struct {
	Version string `json:"version"`
	Driver  string `json:"driver"`
}

// splitKey checks a "namespace/name" key as the server would (Kubernetes
// name rules are left to the server; this catches what cannot be put in a
// URL path) and returns its two parts.
func splitKey(op, field, key string) (string, string, error) {
	parts := strings.Split(key, "/")
	if len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return "", "", invalidArgument(op,
			"%s: %q is not a key of the form namespace/name", field, key)
	}
	for _, p := range parts {
		for _, c := range p {
			if c < 0x21 || c > 0x7e || c == '?' || c == '#' || c == '%' {
				return "", "", invalidArgument(op,
					"%s: %q holds %s, which a Kubernetes name cannot", field, key,
					describeRune(c))
			}
		}
	}
	return parts[0], parts[1], nil
}

func describeRune(c rune) string {
	if c < 0x21 || c == 0x7f {
		return fmt.Sprintf("the control character U+%04X", c)
	}
	return fmt.Sprintf("%q", string(c))
}
