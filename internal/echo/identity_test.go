package echo_test

import (
	"encoding/json"
	"testing"

	"github.com/kdive/kdive/internal/echo"
)

// The wire object is stable: field names and order are part of the contract.
func TestReplyWireFormat(t *testing.T) {
	r := echo.Reply{
		Identity: echo.Identity{Pod: "web-1", Namespace: "default", Node: "node-a", PodIP: "10.0.7.3"},
		Client:   "10.0.8.4:51234",
	}
	got, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"pod":"web-1","namespace":"default","node":"node-a","podIP":"10.0.7.3","client":"10.0.8.4:51234"}`
	if string(got) != want {
		t.Errorf("json.Marshal(Reply) =\n%s\nwant\n%s", got, want)
	}
}

func TestIdentityFromEnv(t *testing.T) {
	t.Setenv("POD_NAME", "web-1")
	t.Setenv("POD_NAMESPACE", "shop")
	t.Setenv("NODE_NAME", "node-b")
	t.Setenv("POD_IP", "10.0.7.3")
	want := echo.Identity{Pod: "web-1", Namespace: "shop", Node: "node-b", PodIP: "10.0.7.3"}
	if got := echo.IdentityFromEnv(); got != want {
		t.Errorf("IdentityFromEnv() = %+v, want %+v", got, want)
	}

	t.Setenv("POD_IP", "")
	want.PodIP = ""
	if got := echo.IdentityFromEnv(); got != want {
		t.Errorf("IdentityFromEnv() with POD_IP empty = %+v, want %+v", got, want)
	}
}
