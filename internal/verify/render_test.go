package verify

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func sampleReport() *Report {
	return &Report{Lab: "vfy", ProxyMode: "nftables", Results: []Result{
		{Name: "node-to-pod", OK: true, Summary: "9 of 9: nodes answered by every pod"},
		{Name: "pod-to-clusterip", Reason: "1 of 3 failed, to ClusterIP kdive-verify/echo: no answer within 3s",
			Details: []string{"a", "b", "c", "d", "e", "f", "g"}},
		{Name: "consistency", OK: true, Skipped: true, Reason: "no kernel reader"},
		{Name: "spread", OK: true, Summary: "p = 0.42", Details: []string{"echo-0: 50"},
			Measurements: map[string]float64{"pValue": 0.42, "requests": 300}},
	}}
}

func TestWriteTable(t *testing.T) {
	r := sampleReport()
	r.OK = len(r.Failed()) == 0
	var b bytes.Buffer
	if err := r.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	t.Log("\n" + out)
	for _, want := range []string{
		"✓  node-to-pod       9 of 9: nodes answered by every pod",
		"✗  pod-to-clusterip  1 of 3 failed, to ClusterIP kdive-verify/echo: no answer within 3s",
		"                       a\n",
		"… and 2 more",
		"-  consistency       skipped: no kernel reader",
		"lab vfy (nftables): 4 checks, 2 passed, 1 failed, 1 skipped: FAILED",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	// Details of passing checks stay out of the table.
	if strings.Contains(out, "echo-0: 50") || strings.Contains(out, "  f\n") {
		t.Error("table shows details it should not")
	}
}

func TestWriteJSON(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	// The field names scripts rely on.
	var doc struct {
		Lab     string           `json:"lab"`
		OK      *bool            `json:"ok"`
		Results []map[string]any `json:"results"`
	}
	if err := json.Unmarshal(b.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Lab != "vfy" || doc.OK == nil || len(doc.Results) != 4 {
		t.Fatalf("report: %s", b.String())
	}
	failed := doc.Results[1]
	if failed["name"] != "pod-to-clusterip" || failed["ok"] != false || !strings.HasPrefix(failed["reason"].(string), "1 of 3") || len(failed["details"].([]any)) != 7 {
		t.Errorf("failed result: %v", failed)
	}
	if s := doc.Results[2]; s["skipped"] != true || s["ok"] != true {
		t.Errorf("skipped result: %v", s)
	}
	if m := doc.Results[3]["measurements"].(map[string]any); m["pValue"] != 0.42 {
		t.Errorf("measurements: %v", m)
	}
}

func TestSelectChecks(t *testing.T) {
	got, err := selectChecks([]string{"spread", "hairpin"})
	if err != nil || len(got) != 2 || got[0].name != "hairpin" || got[1].name != "spread" {
		t.Errorf("selectChecks = %v, %v; want hairpin, spread in suite order", got, err)
	}
	if _, err := selectChecks([]string{"hairpin", "nope"}); err == nil || !strings.Contains(err.Error(), "unknown check nope") {
		t.Errorf("unknown check: %v", err)
	}
	all, _ := selectChecks(nil)
	if len(all) != len(Checks()) {
		t.Errorf("no names select %d of %d checks", len(all), len(Checks()))
	}
}

// TestChecksOn: a lab reports every check but the cluster-only ones (its
// own checks cover them); a cluster reports them all, and every lab-only
// check says why a cluster cannot have it.
func TestChecksOn(t *testing.T) {
	lab, cluster := ChecksOn(onLab), ChecksOn(onCluster)
	if len(cluster) != len(Checks()) {
		t.Errorf("a cluster reports %d of %d checks", len(cluster), len(Checks()))
	}
	for _, c := range lab {
		if c.On == onCluster {
			t.Errorf("a lab reports the cluster-only check %s", c.Name)
		}
	}
	onlyCluster := 0
	for _, c := range suite {
		switch c.only {
		case onLab:
			if c.why == "" {
				t.Errorf("lab-only check %s gives a cluster no reason", c.name)
			}
		case onCluster:
			onlyCluster++
		case "":
		default:
			t.Errorf("check %s: only %q", c.name, c.only)
		}
	}
	if onlyCluster == 0 || len(lab) != len(Checks())-onlyCluster {
		t.Errorf("a lab reports %d checks, want %d", len(lab), len(Checks())-onlyCluster)
	}
}
