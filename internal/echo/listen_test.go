package echo_test

import (
	"testing"

	"github.com/kdive/kdive/internal/echo"
)

func TestParseListen(t *testing.T) {
	tests := []struct {
		in      string
		want    echo.Listen
		wantErr string
	}{
		{in: "8080", want: echo.Listen{Proto: "tcp", Addr: ":8080"}},
		{in: "tcp:8080", want: echo.Listen{Proto: "tcp", Addr: ":8080"}},
		{in: "udp:53", want: echo.Listen{Proto: "udp", Addr: ":53"}},
		{in: "UDP:53", want: echo.Listen{Proto: "udp", Addr: ":53"}},
		{in: "tcp:10.0.1.5:8080", want: echo.Listen{Proto: "tcp", Addr: "10.0.1.5:8080"}},
		{in: "udp:[::1]:53", want: echo.Listen{Proto: "udp", Addr: "[::1]:53"}},
		{in: "udp:[::]:53", want: echo.Listen{Proto: "udp", Addr: "[::]:53"}},
		{in: "10.0.1.5:80", want: echo.Listen{Proto: "tcp", Addr: "10.0.1.5:80"}},
		{in: "tcp::80", want: echo.Listen{Proto: "tcp", Addr: ":80"}},
		{in: "tcp:080", want: echo.Listen{Proto: "tcp", Addr: ":80"}},
		{in: "65535", want: echo.Listen{Proto: "tcp", Addr: ":65535"}},

		{in: "", wantErr: `--listen "": expected [tcp:|udp:][HOST:]PORT, HOST an IP address (IPv6 in brackets)`},
		{in: "tcp:80x", wantErr: `--listen "tcp:80x": port "80x" is not a number in 1-65535`},
		{in: "tcp:", wantErr: `--listen "tcp:": port "" is not a number in 1-65535`},
		{in: "0", wantErr: `--listen "0": port "0" is not a number in 1-65535`},
		{in: "65536", wantErr: `--listen "65536": port "65536" is not a number in 1-65535`},
		{in: "udp:-1", wantErr: `--listen "udp:-1": port "-1" is not a number in 1-65535`},
		{in: "sctp:80", wantErr: `--listen "sctp:80": "sctp" is neither a protocol (tcp, udp) nor an IP address`},
		{in: "localhost:80", wantErr: `--listen "localhost:80": "localhost" is neither a protocol (tcp, udp) nor an IP address`},
		{in: "tcp:localhost:80", wantErr: `--listen "tcp:localhost:80": host "localhost" is not an IP address`},
		{in: "udp:::1:53", wantErr: `--listen "udp:::1:53": expected [tcp:|udp:][HOST:]PORT, HOST an IP address (IPv6 in brackets)`},
		{in: "tcp:10.0.1.5:", wantErr: `--listen "tcp:10.0.1.5:": port "" is not a number in 1-65535`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := echo.ParseListen(tt.in)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("ParseListen(%q) = %+v, %v; want error %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseListen(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			// String gives back a value that parses to the same Listen.
			again, err := echo.ParseListen(got.String())
			if err != nil || again != got {
				t.Errorf("ParseListen(%q.String() = %q) = %+v, %v; want %+v", tt.in, got.String(), again, err, got)
			}
		})
	}
}

func TestListenString(t *testing.T) {
	for l, want := range map[echo.Listen]string{
		{Proto: "tcp", Addr: ":8080"}:         "tcp:8080",
		{Proto: "udp", Addr: "[::1]:53"}:      "udp:[::1]:53",
		{Proto: "tcp", Addr: "10.0.1.5:8080"}: "tcp:10.0.1.5:8080",
	} {
		if got := l.String(); got != want {
			t.Errorf("%+v.String() = %q, want %q", l, got, want)
		}
	}
}
