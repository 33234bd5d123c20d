package verify_test

import (
	"github.com/kdive/kdive/internal/diag"
	"github.com/kdive/kdive/internal/verify"
)

// testInspect reads the proxy's tables back for the consistency check, as
// `kdive verify` does.
var testInspect verify.InspectFunc = diag.InspectProxy
