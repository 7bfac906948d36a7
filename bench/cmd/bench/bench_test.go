package main

import (
	"slices"
	"testing"
)

func TestLoadArithmetic(t *testing.T) {
	quiet := []window{
		{perMin: map[string]float64{"PUT": 6}},
		{perMin: map[string]float64{"PUT": 5}},
		{perMin: map[string]float64{"PUT": 7, "GET": 0}, watches: 1},
	}
	load := []window{
		{perMin: map[string]float64{"PUT": 36, "GET": 40}, watches: 4},
		{perMin: map[string]float64{"PUT": 30, "GET": 46}, watches: 1},
	}
	if got, want := totals(load, quiet), []float64{70, 70}; !slices.Equal(got, want) {
		t.Errorf("totals = %v, want %v", got, want)
	}
	if got, want := totals(quiet, nil), []float64{6, 5, 7}; !slices.Equal(got, want) {
		t.Errorf("totals without a baseline = %v, want %v", got, want)
	}
	if got, want := byVerb(load, quiet, "PUT"), []float64{30, 24}; !slices.Equal(got, want) {
		t.Errorf("byVerb PUT = %v, want %v", got, want)
	}
	if got, want := watches(load, quiet), []float64{4, 1}; !slices.Equal(got, want) {
		t.Errorf("watches = %v, want %v", got, want)
	}
	if got, want := verbs(quiet, load), []string{"GET", "PUT"}; !slices.Equal(got, want) {
		t.Errorf("verbs = %v, want %v", got, want)
	}
	if got, want := verbs(quiet), []string{"PUT"}; !slices.Equal(got, want) {
		t.Errorf("verbs of quiet = %v, want %v (GET is all zeros)", got, want)
	}
}
