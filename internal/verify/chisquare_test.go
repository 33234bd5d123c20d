package verify

import (
	"math"
	"testing"
)

func TestChiSquareSF(t *testing.T) {
	for _, c := range []struct {
		x    float64
		df   int
		want float64
	}{
		{0, 3, 1},
		{3.841458820694124, 1, 0.05},   // the familiar 5% critical value
		{6.634896601021214, 1, 0.01},   // 1%
		{11.070497693516351, 5, 0.05},  // df 5
		{20.515005652432873, 5, 0.001}, // the suite's threshold, 6 endpoints
		{1, 1, 0.31731050786291415},    // erfc(1/√2)
		{2, 2, math.Exp(-1)},           // df 2: e^(-x/2), series branch
		{10, 2, math.Exp(-5)},          // continued-fraction branch
		{30, 4, math.Exp(-15) * 16},    // df 4: e^(-x/2)(1+x/2)
		{4, 1, 0.04550026389635842},
	} {
		got := ChiSquareSF(c.x, c.df)
		if math.Abs(got-c.want) > 1e-9*math.Max(1, c.want) && math.Abs(got-c.want)/c.want > 1e-9 {
			t.Errorf("ChiSquareSF(%v, %d) = %.15g, want %.15g", c.x, c.df, got, c.want)
		}
	}
	if !math.IsNaN(ChiSquareSF(1, 0)) {
		t.Error("ChiSquareSF with 0 degrees of freedom is not NaN")
	}
}

func TestChiSquareUniform(t *testing.T) {
	for _, c := range []struct {
		counts []int
		x2, p  float64
	}{
		{[]int{50, 50, 50, 50, 50, 50}, 0, 1},
		{[]int{60, 40}, 4, 0.04550026389635842},
		{[]int{300, 0, 0, 0, 0, 0}, 1500, 0},
		{[]int{7}, 0, 1},    // one endpoint: nothing to test
		{[]int{0, 0}, 0, 1}, // no observations
	} {
		x2, p := ChiSquareUniform(c.counts)
		if math.Abs(x2-c.x2) > 1e-9 || math.Abs(p-c.p) > 1e-12 {
			t.Errorf("ChiSquareUniform(%v) = %v, %v; want %v, %v", c.counts, x2, p, c.x2, c.p)
		}
	}
	// A fair spread of 300 over 6 passes the suite's threshold, a skewed
	// one (one endpoint gets a third of the connections) fails it.
	if _, p := ChiSquareUniform([]int{45, 52, 55, 48, 50, 50}); p < spreadAlpha {
		t.Errorf("fair spread: p = %v", p)
	}
	if _, p := ChiSquareUniform([]int{100, 40, 40, 40, 40, 40}); p >= spreadAlpha {
		t.Errorf("skewed spread: p = %v", p)
	}
}
