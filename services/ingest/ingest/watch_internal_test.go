package ingest

import (
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestUnknownUntil(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	v7 := func(at time.Time) uuid.UUID {
		id := uuid.Must(uuid.NewV7())
		ms := uint64(at.UnixMilli())
		for i := range 6 { // the first 48 bits are the Unix time in ms
			id[i] = byte(ms >> (40 - 8*i))
		}
		return id
	}
	for _, tt := range []struct {
		name string
		id   uuid.UUID
		want time.Time
	}{
		{"fresh ingest id", v7(now.Add(-time.Second)), now.Add(-time.Second + watchUnknownFor)},
		{"old ingest id", v7(now.Add(-time.Hour)), now.Add(-time.Hour + watchUnknownFor)},
		{"key-derived id", uuid.NewSHA1(uuid.NameSpaceURL, []byte("k")), now.Add(watchUnknownFor)},
		{"not one of ours", uuid.New(), now},
	} {
		if got := unknownUntil(tt.id, now); !got.Equal(tt.want) {
			t.Errorf("%s: unknownUntil = %s, want %s", tt.name, got, tt.want)
		}
	}
}
