package verify

import (
	"context"
	"fmt"
	"sort"
)

// The spread check: new connections to a ClusterIP must be spread evenly
// over its endpoints (every mode gives each endpoint 1/N of them). Pearson's
// chi-square test against the uniform distribution says how likely counts
// this uneven are by chance; only a very unlikely result (p < spreadAlpha)
// fails, so a correct proxy fails about once in a thousand runs.
const (
	spreadRequests = 300
	spreadAlpha    = 0.001
)

func checkSpread(ctx context.Context, e *env) Result {
	src, ok := e.w.client(e.nodes[0].Name)
	if !ok {
		return fail("no client pod on " + e.nodes[0].Name)
	}
	addr := e.w.svc[svcEcho].addr("http")
	echoes := e.w.echoNames()
	counts := map[string]int{}
	var failures []string
	answers := src.from.probe(ctx, ProbeRequest{URL: "http://" + addr.String() + "/", Count: spreadRequests, Parallel: parallelism, Timeout: e.opts.RequestTimeout})
	for _, a := range answers {
		r, err := echoReply(a, true)
		switch {
		case err != nil:
			failures = append(failures, err.Error())
		case !echoes[r.Pod]:
			failures = append(failures, fmt.Sprintf("answered by %s/%s, not an endpoint", r.Namespace, r.Pod))
		default:
			counts[r.Pod]++
		}
	}

	names := e.echoPods()
	sort.Strings(names)
	obs := make([]int, len(names))
	details := make([]string, len(names))
	for i, n := range names {
		obs[i] = counts[n]
		details[i] = fmt.Sprintf("%s: %d", n, counts[n])
	}
	x2, p := ChiSquareUniform(obs)
	m := map[string]float64{
		"requests": spreadRequests, "answered": float64(spreadRequests - len(failures)),
		"endpoints": float64(len(names)), "chiSquare": x2, "pValue": p,
	}
	from := fmt.Sprintf("from %s to %s", podName(src), addr)
	var res Result
	switch {
	case len(failures) > 0:
		res = fail(fmt.Sprintf("%d of %d connections %s failed: %s", len(failures), spreadRequests, from, failures[0]), details...)
	case p < spreadAlpha:
		res = fail(fmt.Sprintf("uneven spread over %d endpoints: chi-square %.1f, p = %.2g < %g", len(names), x2, p, spreadAlpha), details...)
	default:
		res = pass(fmt.Sprintf("%d connections over %d endpoints: chi-square %.1f, p = %.2f", spreadRequests, len(names), x2, p))
		res.Details = details
	}
	res.Measurements = m
	return res
}
