module github.com/nomnomhq/nomnom/deploy

go 1.26.8

require github.com/nomnomhq/nomnom v0.0.0

require (
	github.com/compose-spec/compose-go/v2 v2.16.2 // indirect
	go.yaml.in/yaml/v2 v2.4.2 // indirect
	sigs.k8s.io/yaml v1.6.0 // indirect
)

replace github.com/nomnomhq/nomnom => ..
