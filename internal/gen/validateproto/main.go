// Command validateproto writes buf/validate/validate.proto, printed from the
// descriptor compiled into the protovalidate Go module this repository
// depends on. buf needs the file to compile our protos, the Buf Schema
// Registry may be out of reach, and printing it from the pinned module keeps
// schema and runtime at the same version without vendoring upstream source.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"github.com/jhump/protoreflect/v2/protoprint"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: validateproto OUTPUT_DIR")
		os.Exit(2)
	}
	if err := write(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "validateproto:", err)
		os.Exit(1)
	}
}

func write(root string) error {
	fd := validate.File_buf_validate_validate_proto
	path := filepath.Join(root, filepath.FromSlash(fd.Path()))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := (&protoprint.Printer{}).PrintProtoFile(fd, f); err != nil {
		f.Close()
		return fmt.Errorf("print %s: %w", fd.Path(), err)
	}
	return f.Close()
}
