package transport

import (
	"testing"
	"time"
)

func TestPollCredit(t *testing.T) {
	const poll = 250 * time.Millisecond
	ms := time.Millisecond
	tests := []struct {
		name             string
		elapsed, longest time.Duration
		credit           time.Duration
		starved          bool
	}{
		{"on time, quiet process", poll, 50 * time.Microsecond, poll - 200*time.Microsecond, false},
		{"early poll", 200 * ms, 0, 200 * ms, false},
		{"late poll credits one interval", 400 * ms, 0, poll, false},
		{"short waits take their path's share", poll, 20 * ms, poll - 80*ms, false},
		{"waits of a quarter interval: no credit", poll, 70 * ms, 0, false},
		{"a wait of a whole interval", poll, poll, 0, true},
		{"late by more than an interval", 2*poll + ms, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			credit, starved := pollCredit(tt.elapsed, poll, tt.longest)
			if credit != tt.credit || starved != tt.starved {
				t.Errorf("pollCredit(%v, %v, %v) = %v, %v; want %v, %v", tt.elapsed, poll, tt.longest, credit, starved, tt.credit, tt.starved)
			}
		})
	}
}
