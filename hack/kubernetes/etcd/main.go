// Command etcd is etcd's own server, built from go.etcd.io/etcd/server/v3
// at the version kube-apiserver is released with; the integration tests
// run it on loopback inside a test network namespace.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
