package lab

import (
	"embed"
	"fmt"
	"slices"
	"strings"
)

//go:embed presets/*.yaml
var presetFS embed.FS

// DefaultPreset is the preset `kdive lab up` uses without -f or --preset.
const DefaultPreset = "D"

// Presets lists the embedded presets' names.
func Presets() []string {
	entries, _ := presetFS.ReadDir("presets")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	slices.Sort(names)
	return names
}

// PresetYAML returns the lab file of a preset, exactly as embedded.
func PresetYAML(name string) ([]byte, error) {
	b, err := presetFS.ReadFile("presets/" + strings.ToUpper(name) + ".yaml")
	if err != nil {
		return nil, fmt.Errorf("unknown preset %q: presets are %s", name, strings.Join(Presets(), ", "))
	}
	return b, nil
}
