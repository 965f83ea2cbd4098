// The specification's QueueManager method set (Pipelines-as-Code's
// QueueManagerInterface, with this package's Repository), over a Client,
// and InitQueues as an import of the cluster's export.

package concurrency

import (
	"context"
	"encoding/json"
	"time"
)

// QueueManager keeps Pipelines-as-Code's queue calls, which take no
// context: each call is bounded by Timeout. A method whose signature has
// no error (QueuedPipelineRuns, RemoveFromQueue, ...) reports a failure
// through OnError and returns the empty answer.
type QueueManager struct {
	Client *Client
	// Timeout bounds each call (default 30 s).
	Timeout time.Duration
	// OnError is told the errors the methods without an error result
	// cannot return (default: dropped).
	OnError func(op string, err error)
}

// NewQueueManager returns the QueueManager of a client.
func NewQueueManager(c *Client) *QueueManager {
	return &QueueManager{Client: c, Timeout: 30 * time.Second}
}

func (q *QueueManager) ctx() (context.Context, context.CancelFunc) {
	t := q.Timeout
	if t <= 0 {
		t = 30 * time.Second
	}
	return context.WithTimeout(context.Background(), t)
}

func (q *QueueManager) report(op string, err error) {
	if q.OnError != nil {
		q.OnError(op, err)
	}
}

// QueuedPipelineRuns is the keys of the queued runs in admission order.
func (q *QueueManager) QueuedPipelineRuns(repo *Repository) []string {
	ctx, cancel := q.ctx()
	defer cancel()
	keys, err := q.Client.GetQueuedPipelineRuns(ctx, repo)
	if err != nil {
		q.report("QueuedPipelineRuns", err)
		return nil
	}
	return keys
}

// RunningPipelineRuns is the keys of the runs holding a slot.
func (q *QueueManager) RunningPipelineRuns(repo *Repository) []string {
	ctx, cancel := q.ctx()
	defer cancel()
	keys, err := q.Client.GetRunningPipelineRuns(ctx, repo)
	if err != nil {
		q.report("RunningPipelineRuns", err)
		return nil
	}
	return keys
}

// AddListToRunningQueue queues the runs in the given order and admits as
// many as the limit allows, oldest first. It returns the keys of the runs
// of list that hold a slot afterwards.
func (q *QueueManager) AddListToRunningQueue(repo *Repository, list []string) ([]string, error) {
	ctx, cancel := q.ctx()
	defer cancel()
	held := make(map[string]bool, len(list))
	for _, run := range list {
		r, err := q.Client.Submit(ctx, repo, run, SubmitOptions{})
		if err != nil {
			return nil, err
		}
		if r.Acquired {
			held[run] = true
		}
		for _, l := range r.Admitted {
			held[l.PipelineRun] = true
		}
	}
	out := []string{}
	for _, run := range list {
		if held[run] {
			out = append(out, run)
		}
	}
	return out, nil
}

// AddToPendingQueue queues the runs in the given order. A free slot never
// waits: runs that find one are admitted at once.
func (q *QueueManager) AddToPendingQueue(repo *Repository, list []string) error {
	_, err := q.AddListToRunningQueue(repo, list)
	return err
}

// RemoveFromQueue takes the run out of the repository whether it runs or
// waits; a freed slot goes to the head of the queue. True if anything was
// removed.
func (q *QueueManager) RemoveFromQueue(repoKey, prKey string) bool {
	ctx, cancel := q.ctx()
	defer cancel()
	r, err := q.Client.Release(ctx, repoKey, prKey, "")
	if err != nil {
		q.report("RemoveFromQueue", err)
		return false
	}
	return r.Released || r.Dequeued
}

// RemoveAndTakeItemFromQueue releases a finished run and returns the key
// of the run admitted in its place ("" if none).
func (q *QueueManager) RemoveAndTakeItemFromQueue(repo *Repository, pipelineRunKey string) string {
	ctx, cancel := q.ctx()
	defer cancel()
	r, err := q.Client.Release(ctx, repo.Key(), pipelineRunKey, "")
	if err != nil {
		q.report("RemoveAndTakeItemFromQueue", err)
		return ""
	}
	if len(r.Admitted) == 0 {
		return ""
	}
	return r.Admitted[0].PipelineRun
}

// RemoveRepository removes every lease, queue entry and state of the
// repository.
func (q *QueueManager) RemoveRepository(repo *Repository) {
	ctx, cancel := q.ctx()
	defer cancel()
	if err := q.Client.CleanupRepository(ctx, repo); err != nil {
		q.report("RemoveRepository", err)
	}
}

// ImportReport is what an import did (docs/api.md, "POST /v1/import").
type ImportReport struct {
	Repositories []struct {
		Repository       string `json:"repository"`
		ConcurrencyLimit int    `json:"concurrency_limit"`
	} `json:"repositories"`
	// Running: adopted as running. Admitted: queued runs that hold a slot:
	// start them.
	Running  []string `json:"running"`
	Admitted []string `json:"admitted"`
	Queued   []struct {
		PipelineRun string `json:"pipeline_run"`
		Repository  string `json:"repository"`
		Position    int    `json:"position"`
	} `json:"queued"`
	Skipped []struct {
		PipelineRun string `json:"pipeline_run"`
		Reason      string `json:"reason"`
	} `json:"skipped"`
	Notes []string `json:"notes"`
}

// InitQueues rebuilds the queues from what the cluster shows, by
// Pipelines-as-Code's rules: pipelineRuns is the JSON of the PipelineRuns
// (a List, as `kubectl get pipelineruns -A -o json` prints it, or one
// PipelineRun), repositories the Repository manifests (YAML or JSON;
// empty: the limits the backend holds). Started runs are adopted, pending
// ones queued in execution order; the same call again changes nothing.
// globalRepository names the global Repository ("" : the one named
// pipelines-as-code; "none": no merge).
func (c *Client) InitQueues(ctx context.Context, pipelineRuns []byte, repositories,
	globalRepository string) (*ImportReport, error) {
	const op = "InitQueues"
	if !json.Valid(pipelineRuns) {
		return nil, invalidArgument(op, "pipelineruns: is not JSON")
	}
	body := map[string]any{"pipelineruns": json.RawMessage(pipelineRuns)}
	if repositories != "" {
		body["repositories"] = repositories
	}
	if globalRepository != "" {
		body["global_repository"] = globalRepository
	}
	var out ImportReport
	if err := c.call(ctx, op, "POST", c.pathOf("v1", "import"), "", body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
