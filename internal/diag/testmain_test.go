package diag

import (
	"os"
	"testing"

	"github.com/kdive/kdive/internal/lab"
	"github.com/kdive/kdive/internal/testbin"
)

func TestMain(m *testing.M) { os.Exit(testbin.Main(m)) }

// labBins are the kdive and kdive-cni the tests' labs run (testbin).
func labBins(t testing.TB) lab.Binaries {
	t.Helper()
	return lab.Binaries{Kdive: testbin.Path(t, testbin.Kdive), KdiveCNI: testbin.Path(t, testbin.KdiveCNI)}
}

// LabBins is labBins for the package's external tests.
var LabBins = labBins
