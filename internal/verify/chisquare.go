package verify

import (
	"math"
)

// ChiSquareUniform tests observed counts against a uniform distribution
// over the categories: it returns Pearson's statistic X² and its p-value,
// the probability that counts at least this uneven arise by chance when
// every category is equally likely (k-1 degrees of freedom). With fewer
// than two categories or no observations there is nothing to test: X² 0,
// p 1.
func ChiSquareUniform(counts []int) (x2, p float64) {
	total := 0
	for _, c := range counts {
		total += c
	}
	if len(counts) < 2 || total == 0 {
		return 0, 1
	}
	want := float64(total) / float64(len(counts))
	for _, c := range counts {
		d := float64(c) - want
		x2 += d * d / want
	}
	return x2, ChiSquareSF(x2, len(counts)-1)
}

// ChiSquareSF is the chi-square distribution's survival function: the
// probability that a variable with df degrees of freedom exceeds x. It is
// the regularized upper incomplete gamma function Q(df/2, x/2).
func ChiSquareSF(x float64, df int) float64 {
	if df < 1 || math.IsNaN(x) {
		return math.NaN()
	}
	if x <= 0 {
		return 1
	}
	return gammaQ(float64(df)/2, x/2)
}

// gammaQ is the regularized upper incomplete gamma function Q(a, x), by
// its series below a+1 and its continued fraction above (Numerical
// Recipes, 6.2), accurate to about 1e-14.
func gammaQ(a, x float64) float64 {
	if x < a+1 {
		return 1 - gammaPSeries(a, x)
	}
	return gammaQFraction(a, x)
}

const (
	gammaEps   = 1e-15
	gammaIters = 1000
)

func lnGammaPrefix(a, x float64) float64 {
	lg, _ := math.Lgamma(a)
	return a*math.Log(x) - x - lg
}

// gammaPSeries is P(a, x) = x^a e^-x / Γ(a+1) · Σ x^n / ((a+1)…(a+n)).
func gammaPSeries(a, x float64) float64 {
	term := 1 / a
	sum := term
	for n := 1; n < gammaIters; n++ {
		term *= x / (a + float64(n))
		sum += term
		if math.Abs(term) < math.Abs(sum)*gammaEps {
			break
		}
	}
	return sum * math.Exp(lnGammaPrefix(a, x))
}

// gammaQFraction is Q(a, x) by Lentz's method on its continued fraction.
func gammaQFraction(a, x float64) float64 {
	const tiny = 1e-300
	b := x + 1 - a
	c := 1 / tiny
	d := 1 / b
	h := d
	for i := 1; i < gammaIters; i++ {
		an := -float64(i) * (float64(i) - a)
		b += 2
		d = an*d + b
		if math.Abs(d) < tiny {
			d = tiny
		}
		c = b + an/c
		if math.Abs(c) < tiny {
			c = tiny
		}
		d = 1 / d
		delta := d * c
		h *= delta
		if math.Abs(delta-1) < gammaEps {
			break
		}
	}
	return math.Exp(lnGammaPrefix(a, x)) * h
}
