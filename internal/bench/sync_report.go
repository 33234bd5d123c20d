package bench

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

const mib = 1 << 20

// Targets of the nftables mode (the issue's): at 10,000 services × 10
// endpoints a first sync under 2 s and within 1.5× of the floor, a
// one-endpoint change under 20 ms, peak RSS under 150 MiB; at 50,000 × 10
// a one-endpoint change under 50 ms.
const (
	targetFirst10k    = 2.0
	targetFloorRatio  = 1.5
	targetChange10k   = 0.020
	targetRSS10k      = 150 * mib
	targetChange50k   = 0.050
	targetEndpoints   = 10
	targetServices10k = 10000
	targetServices50k = 50000
	upstreamKubeProxy = "upstream kube-proxy v1.37.2"
)

// anchor is upstream kube-proxy measured at a size, for context.
type anchor struct {
	mode, flavour       string
	services, endpoints int
	first, change       float64 // seconds
	rss                 int64   // bytes; 0 unknown
}

var anchors = []anchor{
	{mode: ModeNftables, services: 10000, endpoints: 10, first: 47, change: 0.35, rss: 320 * mib},
	{mode: ModeNftables, services: 5000, endpoints: 10, first: 4.6, change: 0.15},
	{mode: ModeIPTables, flavour: "legacy", services: 10000, endpoints: 10, first: 10.6, change: 2.0},
}

// syncReport tabulates the runs, checks the targets and draws first sync
// against the floor.
func syncReport(runs []SyncRun, notes []string) *Report {
	r := &Report{
		Title: "kdive bench sync: control-plane cost of the service proxy",
		Header: []string{"mode", "services×endpoints", "rules", "elements", "first sync", "floor", "first/floor",
			"endpoint change", "service add", "no-op", "full resync", "peak RSS"},
		Chart: &Chart{Title: "First sync against the floor (the kernel's own tool, one shot)", Unit: "seconds"},
	}
	first := Series{Name: "first sync (kdive)"}
	floor := Series{Name: "floor (one-shot restore)"}
	for _, run := range runs {
		r.Runs = append(r.Runs, run)
		fl := floorOf(run)
		elements := strconv.Itoa(run.Elements)
		if run.VirtualServers > 0 {
			elements = fmt.Sprintf("%d (+%d VS, %d RS)", run.Elements, run.VirtualServers, run.RealServers)
		}
		r.Rows = append(r.Rows, []string{
			run.Label(), fmt.Sprintf("%d×%d", run.Services, run.Endpoints),
			strconv.Itoa(run.Rules), elements,
			Seconds(run.FirstSyncSeconds), Seconds(fl), Ratio(run.FirstSyncSeconds, fl),
			Seconds(run.EndpointChangeSeconds), Seconds(run.ServiceAddSeconds),
			Seconds(run.NoopSyncSeconds), Seconds(run.FullResyncSeconds), formatMiB(run.PeakRSSBytes),
		})
		r.Chart.Labels = append(r.Chart.Labels, fmt.Sprintf("%s %d×%d", run.Label(), run.Services, run.Endpoints))
		first.Values = append(first.Values, run.FirstSyncSeconds)
		floor.Values = append(floor.Values, fl)
		if run.FloorNote != "" {
			notes = append(notes, fmt.Sprintf("%s %d×%d: floor %s", run.Label(), run.Services, run.Endpoints, run.FloorNote))
		}
	}
	r.Chart.Series = []Series{first, floor}
	r.Notes = append(targetNotes(runs), anchorNotes(runs)...)
	r.Notes = append(r.Notes, floorNotes(runs)...)
	r.Notes = append(r.Notes, notes...)
	return r
}

// floorNotes say what the floor is in each mode, and why a first sync
// can beat it.
func floorNotes(runs []SyncRun) []string {
	var tools, faster []string
	seen := map[string]bool{}
	for _, run := range runs {
		if run.FloorTool != "" && !seen[run.Label()] {
			seen[run.Label()] = true
			tools = append(tools, run.FloorTool+" for "+run.Label())
		}
		if run.FloorSeconds > 0 && run.FirstSyncSeconds < run.FloorSeconds {
			faster = append(faster, fmt.Sprintf("%s %d×%d (%s)", run.Label(), run.Services, run.Endpoints,
				Ratio(run.FirstSyncSeconds, run.FloorSeconds)))
		}
	}
	if len(tools) == 0 {
		return nil
	}
	notes := []string{"floor: the final ruleset dumped from the synced namespace and loaded into a fresh one in one shot by the kernel's own tools (" +
		strings.Join(tools, "; ") + "); peak RSS: the syncing process or a tool it ran, whichever peaked higher"}
	if len(faster) > 0 {
		notes = append(notes, "first sync beat the floor in "+strings.Join(faster, ", ")+
			": loading everything in one transaction costs the tool more than the agent's batched restores")
	}
	return notes
}

func floorOf(run SyncRun) float64 {
	if run.FloorSeconds == 0 {
		return math.NaN()
	}
	return run.FloorSeconds
}

// formatMiB formats bytes as "42 MiB".
func formatMiB(b int64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/mib)
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// targetNotes says, for each nftables target whose size ran, met or
// missed with the numbers.
func targetNotes(runs []SyncRun) []string {
	var notes []string
	ranNft := false
	for _, run := range runs {
		if run.Mode != ModeNftables {
			continue
		}
		ranNft = true
		if run.Endpoints != targetEndpoints {
			continue
		}
		size := fmt.Sprintf("nftables %d×%d", run.Services, run.Endpoints)
		switch run.Services {
		case targetServices10k:
			fl := floorOf(run)
			notes = append(notes,
				fmt.Sprintf("target %s first sync < %s: %s (%s)", size, Seconds(targetFirst10k),
					verdict(run.FirstSyncSeconds < targetFirst10k), Seconds(run.FirstSyncSeconds)),
				fmt.Sprintf("target %s first sync ≤ %.1f× floor: %s (%s against %s, %s)", size, targetFloorRatio,
					verdict(!math.IsNaN(fl) && run.FirstSyncSeconds <= targetFloorRatio*fl),
					Seconds(run.FirstSyncSeconds), Seconds(fl), Ratio(run.FirstSyncSeconds, fl)),
				fmt.Sprintf("target %s one-endpoint change < %s: %s (%s)", size, Seconds(targetChange10k),
					verdict(run.EndpointChangeSeconds < targetChange10k), Seconds(run.EndpointChangeSeconds)),
				fmt.Sprintf("target %s peak RSS < %s: %s (%s; the Go process alone %s)", size, formatMiB(targetRSS10k),
					verdict(run.PeakRSSBytes > 0 && run.PeakRSSBytes < targetRSS10k), formatMiB(run.PeakRSSBytes), formatMiB(run.ProcessRSSBytes)))
		case targetServices50k:
			notes = append(notes,
				fmt.Sprintf("target %s completes with a one-endpoint change < %s: %s (%s; first sync %s)", size, Seconds(targetChange50k),
					verdict(run.EndpointChangeSeconds < targetChange50k), Seconds(run.EndpointChangeSeconds), Seconds(run.FirstSyncSeconds)))
		}
	}
	if ranNft && len(notes) == 0 {
		notes = append(notes, "nftables targets are set at 10000×10 and 50000×10 (--services 10000,50000 --endpoints 10); no run of those sizes")
	}
	return notes
}

// anchorNotes print upstream's numbers next to kdive's where the sizes
// match.
func anchorNotes(runs []SyncRun) []string {
	var notes []string
	for _, a := range anchors {
		for _, run := range runs {
			if run.Mode != a.mode || run.Flavour != a.flavour || run.Services != a.services || run.Endpoints != a.endpoints {
				continue
			}
			up := fmt.Sprintf("first sync %s, one-endpoint change %s", Seconds(a.first), Seconds(a.change))
			ours := fmt.Sprintf("first sync %s, one-endpoint change %s", Seconds(run.FirstSyncSeconds), Seconds(run.EndpointChangeSeconds))
			if a.rss > 0 {
				up += ", " + formatMiB(a.rss)
				ours += ", " + formatMiB(run.PeakRSSBytes)
			}
			notes = append(notes, fmt.Sprintf("%s %s %d×%d: %s; kdive: %s", upstreamKubeProxy, run.Label(), a.services, a.endpoints, up, ours))
		}
	}
	return notes
}
