// The QueueManager method set (Pipelines-as-Code's QueueManagerInterface)
// and InitQueues, against the real server.

package concurrency_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	concurrency "github.com/pac-concurrency/pac-concurrency/clients/go"
	"github.com/pac-concurrency/pac-concurrency/clients/go/internal/testserver"
)

// pacQueueManager is Pipelines-as-Code's QueueManagerInterface with this
// package's Repository and a run key for the PipelineRun (InitQueues,
// which takes Kubernetes clientsets there, is Client.InitQueues).
type pacQueueManager interface {
	RemoveRepository(repo *concurrency.Repository)
	QueuedPipelineRuns(repo *concurrency.Repository) []string
	RunningPipelineRuns(repo *concurrency.Repository) []string
	AddListToRunningQueue(repo *concurrency.Repository, list []string) ([]string, error)
	AddToPendingQueue(repo *concurrency.Repository, list []string) error
	RemoveFromQueue(repoKey, prKey string) bool
	RemoveAndTakeItemFromQueue(repo *concurrency.Repository, pipelineRunKey string) string
}

var _ pacQueueManager = (*concurrency.QueueManager)(nil)

func TestQueueManagerKeepsPipelinesAsCodesCalls(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		var reported []string
		qm := concurrency.NewQueueManager(newClient(t, concurrency.Options{URL: srv.URL}))
		qm.OnError = func(op string, err error) { reported = append(reported, op+": "+err.Error()) }
		ns := testserver.Namespace("qm")
		repo := repoOf(t, ns+"/app", 2)
		key := func(names ...string) []string {
			for i := range names {
				names[i] = ns + "/" + names[i]
			}
			return names
		}
		got, err := qm.AddListToRunningQueue(repo, key("pr-1", "pr-2", "pr-3"))
		if err != nil || strings.Join(got, ",") != strings.Join(key("pr-1", "pr-2"), ",") {
			t.Fatalf("AddListToRunningQueue = %v, %v; want pr-1, pr-2", got, err)
		}
		testserver.Must(t, qm.AddToPendingQueue(repo, key("pr-4")), "AddToPendingQueue")
		if q := qm.QueuedPipelineRuns(repo); strings.Join(q, ",") != strings.Join(key("pr-3", "pr-4"), ",") {
			t.Fatalf("QueuedPipelineRuns = %v", q)
		}
		if next := qm.RemoveAndTakeItemFromQueue(repo, ns+"/pr-1"); next != ns+"/pr-3" {
			t.Fatalf("RemoveAndTakeItemFromQueue(pr-1) = %q; want pr-3", next)
		}
		if !qm.RemoveFromQueue(repo.Key(), ns+"/pr-4") {
			t.Fatal("RemoveFromQueue(pr-4), which waits, removed nothing")
		}
		if qm.RemoveFromQueue(repo.Key(), ns+"/pr-9") {
			t.Fatal("RemoveFromQueue of an unknown run removed something")
		}
		if r := qm.RunningPipelineRuns(repo); strings.Join(r, ",") != strings.Join(key("pr-2", "pr-3"), ",") {
			t.Fatalf("RunningPipelineRuns = %v", r)
		}
		qm.RemoveRepository(repo)
		if r := qm.RunningPipelineRuns(repo); len(r) != 0 {
			t.Fatalf("after RemoveRepository running = %v", r)
		}
		if len(reported) != 0 {
			t.Fatalf("errors reported: %v", reported)
		}
		// A failure of a call without an error result goes to OnError.
		if q := qm.QueuedPipelineRuns(&concurrency.Repository{Namespace: "Bad", Name: "x"}); q != nil ||
			len(reported) != 1 || !strings.Contains(reported[0], "INVALID_ARGUMENT") {
			t.Fatalf("a bad key: %v, reported %v", q, reported)
		}
	})
}

// pipelineRun is a PipelineRun as Pipelines-as-Code labels it.
func pipelineRun(ns, name, state, order string, created time.Time) map[string]any {
	pac := map[string]any{
		"pipelinesascode.tekton.dev/state":      state,
		"pipelinesascode.tekton.dev/repository": "app",
	}
	annotations := map[string]any{
		"pipelinesascode.tekton.dev/state":           state,
		"pipelinesascode.tekton.dev/repository":      "app",
		"pipelinesascode.tekton.dev/execution-order": order,
	}
	run := map[string]any{
		"apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
		"metadata": map[string]any{"name": name, "namespace": ns,
			"creationTimestamp": created.UTC().Format(time.RFC3339),
			"labels":            pac, "annotations": annotations},
		"spec":   map[string]any{"pipelineRef": map[string]any{"name": "build"}},
		"status": map[string]any{},
	}
	if state == "queued" {
		run["spec"].(map[string]any)["status"] = "PipelineRunPending"
	}
	return run
}

func TestInitQueuesImportsAClusterExport(t *testing.T) {
	eachBackend(t, func(t *testing.T, b testserver.Backend) {
		srv := testserver.Start(t, b.Env)
		c := newClient(t, concurrency.Options{URL: srv.URL})
		ctx := timeout(t, 60*time.Second)
		ns := testserver.Namespace("init")
		t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
		order := fmt.Sprintf("%s/pr-2,%s/pr-3", ns, ns)
		list := map[string]any{"apiVersion": "v1", "kind": "List", "items": []any{
			pipelineRun(ns, "pr-1", "started", ns+"/pr-1", t0),
			pipelineRun(ns, "pr-3", "queued", order, t0.Add(2*time.Second)),
			pipelineRun(ns, "pr-2", "queued", order, t0.Add(time.Second)),
		}}
		export, err := json.Marshal(list)
		testserver.Must(t, err, "marshal")
		manifests := fmt.Sprintf("apiVersion: pipelinesascode.tekton.dev/v1alpha1\n"+
			"kind: Repository\nmetadata:\n  name: app\n  namespace: %s\n"+
			"spec:\n  url: https://github.com/example/app\n  concurrency_limit: 2\n", ns)
		report, err := c.InitQueues(ctx, export, manifests, "none")
		testserver.Must(t, err, "InitQueues")
		if strings.Join(report.Running, ",") != ns+"/pr-1" ||
			strings.Join(report.Admitted, ",") != ns+"/pr-2" ||
			len(report.Queued) != 1 || report.Queued[0].PipelineRun != ns+"/pr-3" ||
			len(report.Repositories) != 1 || report.Repositories[0].ConcurrencyLimit != 2 {
			t.Fatalf("InitQueues report %+v", report)
		}
		again, err := c.InitQueues(ctx, export, manifests, "none")
		testserver.Must(t, err, "InitQueues again")
		if strings.Join(again.Admitted, ",") != ns+"/pr-2" || len(again.Queued) != 1 {
			t.Fatalf("the same import again reports %+v", again)
		}
		running, err := c.GetRunningPipelineRuns(ctx, repoOf(t, ns+"/app", -1))
		if err != nil || len(running) != 2 {
			t.Fatalf("running after the import = %v, %v", running, err)
		}
		_, err = c.InitQueues(ctx, []byte("{not json"), "", "")
		if !errors.Is(err, concurrency.ErrInvalidArgument) {
			t.Fatalf("InitQueues of a broken export: %v", err)
		}
	})
}
