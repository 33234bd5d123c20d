// Package cni is the logic of the kdive CNI plugin (cmd/kdive-cni): ADD, DEL,
// CHECK, STATUS and GC over a pod's network namespace. It owns the plugin's
// contract with the runtime (spec versions, result, error codes); the kernel
// work it asks for goes through internal/kernel.
//
// Today the plugin answers VERSION; the pod network (interfaces, IPAM) is the
// next capability to land here.
package cni
