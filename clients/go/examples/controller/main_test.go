package main

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pac-concurrency/pac-concurrency/clients/go/internal/testserver"
)

// The example's loop against the real server: every run is admitted once,
// in creation order, never more than the limit at once, and all finish.
func TestControllerLoopRunsEveryRunWithinTheLimit(t *testing.T) {
	for _, b := range testserver.Backends(t) {
		b := b
		t.Run(b.Name, func(t *testing.T) {
			srv := testserver.Start(t, b.Env)
			ns := testserver.Namespace("example")
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cfg := config{server: srv.URL, repo: ns + "/app", limit: 2, runs: 5,
				work: 300 * time.Millisecond}
			if err := run(ctx, cfg, &out); err != nil {
				t.Fatalf("run: %v\n%s", err, out.String())
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			holding, most := 0, 0
			token := map[string]int64{} // run -> fencing token
			queued := map[string]bool{}
			admitted := regexp.MustCompile(`^(\S+) admitted \(fencing token (\d+)\)$`)
			for _, l := range lines {
				if m := admitted.FindStringSubmatch(l); m != nil {
					token[m[1]], _ = strconv.ParseInt(m[2], 10, 64)
					holding++
					if holding > most {
						most = holding
					}
				} else if strings.Contains(l, " finished: releasing its slot") {
					// Printed before the release is sent, so before the
					// admission it causes is printed.
					holding--
				} else if i := strings.Index(l, " queued at position"); i > 0 {
					queued[l[:i]] = true
				}
			}
			if len(token) != 5 || holding != 0 {
				t.Fatalf("%d admitted, %d still holding:\n%s", len(token), holding, out.String())
			}
			if most > 2 {
				t.Fatalf("%d runs held a slot at once, limit 2:\n%s", most, out.String())
			}
			// The runs that waited were admitted in creation order (pr-N was
			// created before pr-N+1): their fencing tokens grow with N.
			var waited []string
			for i := 1; i <= 5; i++ {
				if r := fmt.Sprintf("%s/pr-%d", ns, i); queued[r] {
					waited = append(waited, r)
				}
			}
			if len(waited) < 3 {
				t.Fatalf("only %v waited; with 5 runs and limit 2 at least 3 do:\n%s", waited,
					out.String())
			}
			for i := 1; i < len(waited); i++ {
				if token[waited[i-1]] >= token[waited[i]] {
					t.Fatalf("%s (created first) was admitted after %s:\n%s", waited[i-1],
						waited[i], out.String())
				}
			}
		})
	}
}
