// The end-to-end suite: real Pods of the shipped manifests on a real
// kubelet (hack/e2e.sh), and the packer of the images they run. A module
// of its own, so the SDK's module gains no dependency from it; build and
// test it with GOWORK=off.
module github.com/mpsync/mpsync/test/e2e

go 1.26.0

require (
	github.com/google/go-containerregistry v0.22.1
	github.com/stretchr/testify v1.12.1
)

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)
