package lab

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Pods and Deployments, after upstream's ValidatePodSpec (the parts a
// lab uses: containers, their ports, node selector, restart policy) and
// ValidateDeploymentSpec.

// validateDeployment is upstream's ValidateDeployment for a lab.
func validateDeployment(d *appsv1.Deployment, fp *field.Path) field.ErrorList {
	errs := validateMeta(&d.ObjectMeta, fp.Child("metadata"))
	spec := fp.Child("spec")
	if d.Spec.Replicas != nil {
		errs = append(errs, apivalidation.ValidateNonnegativeField(int64(*d.Spec.Replicas), spec.Child("replicas"))...)
	}
	sel := d.Spec.Selector
	switch {
	case sel == nil:
		errs = append(errs, field.Required(spec.Child("selector"), ""))
	case len(sel.MatchLabels)+len(sel.MatchExpressions) == 0:
		errs = append(errs, field.Invalid(spec.Child("selector"), sel, "empty selector is invalid for deployment"))
	default:
		se := metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, spec.Child("selector"))
		errs = append(errs, se...)
		if len(se) > 0 {
			break
		}
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			errs = append(errs, field.Invalid(spec.Child("selector"), sel, "invalid label selector"))
		} else if !s.Matches(labels.Set(d.Spec.Template.Labels)) {
			errs = append(errs, field.Invalid(spec.Child("template", "metadata", "labels"), d.Spec.Template.Labels,
				"`selector` does not match template `labels`"))
		}
	}
	tp := spec.Child("template")
	errs = append(errs, validateMeta(&d.Spec.Template.ObjectMeta, tp.Child("metadata"))...)
	errs = append(errs, validatePodSpec(&d.Spec.Template.Spec, tp.Child("spec"))...)
	if rp := d.Spec.Template.Spec.RestartPolicy; rp != "" && rp != corev1.RestartPolicyAlways {
		errs = append(errs, field.NotSupported(tp.Child("spec", "restartPolicy"), rp, []string{"Always"}))
	}
	return errs
}

var restartPolicies = []string{"Always", "Never", "OnFailure"}

// validatePodSpec checks the containers (upstream's validateContainers,
// validateContainerPorts, checkHostPortConflicts), the node selector and
// the restart policy.
func validatePodSpec(spec *corev1.PodSpec, fp *field.Path) field.ErrorList {
	var errs field.ErrorList
	cp := fp.Child("containers")
	if len(spec.Containers) == 0 {
		errs = append(errs, field.Required(cp, ""))
	}
	names := map[string]bool{}
	hostPorts := map[string]bool{}
	for i := range spec.Containers {
		c := &spec.Containers[i]
		path := cp.Index(i)
		if c.Name == "" {
			errs = append(errs, field.Required(path.Child("name"), ""))
		} else {
			for _, m := range validation.IsDNS1123Label(c.Name) {
				errs = append(errs, field.Invalid(path.Child("name"), c.Name, m))
			}
		}
		if names[c.Name] {
			errs = append(errs, field.Duplicate(path.Child("name"), c.Name))
		}
		names[c.Name] = true
		if c.Image == "" {
			errs = append(errs, field.Required(path.Child("image"), ""))
		}
		errs = append(errs, validateContainerPorts(c.Ports, path.Child("ports"), hostPorts)...)
	}
	errs = append(errs, metav1validation.ValidateLabels(spec.NodeSelector, fp.Child("nodeSelector"))...)
	if rp := spec.RestartPolicy; rp != "" && !oneOfValues(string(rp), restartPolicies) {
		errs = append(errs, field.NotSupported(fp.Child("restartPolicy"), rp, restartPolicies))
	}
	return errs
}

// validateContainerPorts is upstream's validateContainerPorts, with the
// protocol defaulted to TCP first; hostPorts accumulates the host ports of
// the pod's containers (upstream's AccumulateUniqueHostPorts).
func validateContainerPorts(ports []corev1.ContainerPort, fp *field.Path, hostPorts map[string]bool) field.ErrorList {
	var errs field.ErrorList
	names := map[string]bool{}
	for i, port := range ports {
		path := fp.Index(i)
		if port.Name != "" {
			if msgs := validation.IsValidPortName(port.Name); len(msgs) > 0 {
				for _, m := range msgs {
					errs = append(errs, field.Invalid(path.Child("name"), port.Name, m))
				}
			} else if names[port.Name] {
				errs = append(errs, field.Duplicate(path.Child("name"), port.Name))
			}
			names[port.Name] = true
		}
		if port.ContainerPort == 0 {
			errs = append(errs, field.Required(path.Child("containerPort"), ""))
		} else {
			for _, m := range validation.IsValidPortNum(int(port.ContainerPort)) {
				errs = append(errs, field.Invalid(path.Child("containerPort"), port.ContainerPort, m))
			}
		}
		if port.HostPort != 0 {
			for _, m := range validation.IsValidPortNum(int(port.HostPort)) {
				errs = append(errs, field.Invalid(path.Child("hostPort"), port.HostPort, m))
			}
		}
		proto := port.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		if !oneOfValues(string(proto), portProtocols) {
			errs = append(errs, field.NotSupported(path.Child("protocol"), proto, portProtocols))
		}
		if port.HostIP != "" {
			errs = append(errs, validation.IsValidIPForLegacyField(path.Child("hostIP"), port.HostIP, true, nil)...)
		}
		if port.HostPort != 0 {
			k := fmt.Sprintf("%s/%s/%d", proto, port.HostIP, port.HostPort)
			if hostPorts[k] {
				errs = append(errs, field.Duplicate(path.Child("hostPort"), k))
			}
			hostPorts[k] = true
		}
	}
	return errs
}
