package image_test

import (
	"context"
	"fmt"
	"log"

	"github.com/smolvm/smolvm"
	"github.com/smolvm/smolvm/image"
	"github.com/smolvm/smolvm/image/oci"
)

// The reference's ImageBuilder().build_alpine_ssh(name, password, size):
// an Alpine image root logs into with a password (and always with the
// VM's key), then a VM booted from it by name.
func ExampleBuilder_BuildAlpineSSH() {
	ctx := context.Background()
	b := &image.Builder{} // cache under $SMOLVM_HOME; agent: see ResolveAgent
	img, err := b.BuildAlpineSSH(ctx, "alpine-ssh", "s3cret", 256)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(img.Kernel, img.Rootfs, img.BootArgs)

	vm, err := smolvm.Start(ctx, smolvm.WithImage("alpine-ssh"), smolvm.WithDisk(img.SizeMiB))
	if err != nil {
		log.Fatal(err)
	}
	defer vm.Delete(ctx)
	res, _ := vm.Run(ctx, "apk info")
	fmt.Print(res.Stdout)
}

// Images from Debian's archive with extra packages, from any OCI image,
// or from a tree or tarball of your own. A second Build with the same
// inputs returns the cached image at once. OCI images need the registry
// client of package image/oci, wired in as Builder.OCI.
func ExampleBuilder_Build() {
	ctx := context.Background()
	b := &image.Builder{OCI: oci.Puller{}}
	for name, opts := range map[string]image.BuildOptions{
		"deb":    {From: "debian:bookworm", Packages: []string{"curl", "python3"}, SizeMiB: 1024},
		"py":     {From: "oci:docker.io/library/python:3.12-slim"},
		"layout": {From: "oci:/srv/oci-layout:v1"},
		"mine":   {From: "dir:/srv/rootfs", Password: "s3cret"},
	} {
		img, err := b.Build(ctx, name, opts)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(img.Name, img.Source, img.SizeMiB)
	}
}
