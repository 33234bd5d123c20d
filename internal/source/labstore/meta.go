package labstore

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

type metav1ListOptions = metav1.ListOptions

func namespaceOf(o runtime.Object) string { return o.(metav1.Object).GetNamespace() }
func nameOf(o runtime.Object) string      { return o.(metav1.Object).GetName() }
