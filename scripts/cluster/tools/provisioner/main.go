// Command provisioner turns claims of a CSI driver's StorageClasses into volumes through
// the driver's CreateVolume and DeleteVolume, the way external-provisioner does (the
// StorageClass parameters without the csi.storage.k8s.io/ keys, the secrets those keys
// name, --extra-create-metadata, the PV's secret references). Built on
// sigs.k8s.io/sig-storage-lib-external-provisioner, as external-provisioner is. It stands
// in for that sidecar in the test cluster only because its module is not served by the Go
// module proxy this project builds from; see docs/TESTING.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v11/controller"
)

const prefix = "csi.storage.k8s.io/"

type provisioner struct {
	driver string
	csi    csi.ControllerClient
	kube   kubernetes.Interface
}

// secret reads the Secret that the class's `<kind>-secret-name/-namespace` keys name,
// with ${pvc.name} and ${pvc.namespace} filled in; nil when the class names none.
func (p *provisioner) secretRef(params map[string]string, kind string, pvc *v1.PersistentVolumeClaim) *v1.SecretReference {
	name, ns := params[prefix+kind+"-secret-name"], params[prefix+kind+"-secret-namespace"]
	if name == "" {
		return nil
	}
	fill := func(s string) string {
		if pvc == nil {
			return s
		}
		return strings.NewReplacer("${pvc.name}", pvc.Name, "${pvc.namespace}", pvc.Namespace).Replace(s)
	}
	return &v1.SecretReference{Name: fill(name), Namespace: fill(ns)}
}

func (p *provisioner) secretData(ctx context.Context, ref *v1.SecretReference) (map[string]string, error) {
	if ref == nil {
		return nil, nil
	}
	s, err := p.kube.CoreV1().Secrets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	out := map[string]string{}
	for k, v := range s.Data {
		out[k] = string(v)
	}
	return out, nil
}

func accessMode(m v1.PersistentVolumeAccessMode) csi.VolumeCapability_AccessMode_Mode {
	switch m {
	case v1.ReadWriteOnce:
		return csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	case v1.ReadOnlyMany:
		return csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	case v1.ReadWriteOncePod:
		return csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	default:
		return csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	}
}

func (p *provisioner) Provision(ctx context.Context, o controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	sc := o.StorageClass
	params := map[string]string{}
	for k, v := range sc.Parameters {
		if !strings.HasPrefix(k, prefix) {
			params[k] = v
		}
	}
	params[prefix+"pvc/name"] = o.PVC.Name
	params[prefix+"pvc/namespace"] = o.PVC.Namespace
	params[prefix+"pv/name"] = o.PVName
	secrets, err := p.secretData(ctx, p.secretRef(sc.Parameters, "provisioner", o.PVC))
	if err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	var caps []*csi.VolumeCapability
	for _, m := range o.PVC.Spec.AccessModes {
		caps = append(caps, &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{MountFlags: sc.MountOptions}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: accessMode(m)},
		})
	}
	req := o.PVC.Spec.Resources.Requests[v1.ResourceStorage]
	res, err := p.csi.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:               o.PVName,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: req.Value()},
		VolumeCapabilities: caps,
		Parameters:         params,
		Secrets:            secrets,
	})
	if err != nil {
		return nil, controller.ProvisioningInBackground, err
	}
	vol := res.GetVolume()
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: o.PVName},
		Spec: v1.PersistentVolumeSpec{
			AccessModes:                   o.PVC.Spec.AccessModes,
			MountOptions:                  sc.MountOptions,
			PersistentVolumeReclaimPolicy: *sc.ReclaimPolicy,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: *resource.NewQuantity(vol.GetCapacityBytes(), resource.BinarySI)},
			PersistentVolumeSource: v1.PersistentVolumeSource{CSI: &v1.CSIPersistentVolumeSource{
				Driver:                    p.driver,
				VolumeHandle:              vol.GetVolumeId(),
				VolumeAttributes:          vol.GetVolumeContext(),
				NodeStageSecretRef:        p.secretRef(sc.Parameters, "node-stage", o.PVC),
				NodePublishSecretRef:      p.secretRef(sc.Parameters, "node-publish", o.PVC),
				ControllerExpandSecretRef: p.secretRef(sc.Parameters, "controller-expand", o.PVC),
			}},
		},
	}
	if ref := p.secretRef(sc.Parameters, "provisioner", o.PVC); ref != nil {
		// What Delete needs once the class may be gone (external-provisioner keeps it so too).
		pv.Annotations = map[string]string{
			"volume.kubernetes.io/provisioner-deletion-secret-name":      ref.Name,
			"volume.kubernetes.io/provisioner-deletion-secret-namespace": ref.Namespace,
		}
	}
	log.Printf("provisioned %s for %s/%s as %s", o.PVName, o.PVC.Namespace, o.PVC.Name, vol.GetVolumeId())
	return pv, controller.ProvisioningFinished, nil
}

func (p *provisioner) Delete(ctx context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != p.driver {
		return &controller.IgnoredError{Reason: "not this driver's volume"}
	}
	var ref *v1.SecretReference
	if name := pv.Annotations["volume.kubernetes.io/provisioner-deletion-secret-name"]; name != "" {
		ref = &v1.SecretReference{Name: name, Namespace: pv.Annotations["volume.kubernetes.io/provisioner-deletion-secret-namespace"]}
	}
	secrets, err := p.secretData(ctx, ref)
	if err != nil {
		return err
	}
	_, err = p.csi.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle, Secrets: secrets})
	if err == nil {
		log.Printf("deleted %s (%s)", pv.Name, pv.Spec.CSI.VolumeHandle)
	}
	return err
}

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "the driver's socket")
	leader := flag.Bool("leader-election", false, "one replica provisions at a time (a Lease)")
	leaderNS := flag.String("leader-election-namespace", "", "the Lease's namespace")
	flag.Bool("extra-create-metadata", true, "always on")
	flag.Duration("timeout", 120*time.Second, "ignored")
	flag.Int("v", 0, "ignored (the sidecar's verbosity flag)")
	flag.Parse()
	conn, err := grpc.NewClient("unix://"+*csiAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("csi address %s: %v", *csiAddress, err)
	}
	var driver string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			driver = info.GetName()
			break
		}
		log.Printf("waiting for the driver at %s: %v", *csiAddress, err)
		time.Sleep(time.Second)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		log.Fatalf("in-cluster config: %v", err)
	}
	kube := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	p := &provisioner{driver: driver, csi: csi.NewControllerClient(conn), kube: kube}
	host, _ := os.Hostname()
	log.Printf("provisioning for %s as %s", driver, host)
	opts := []func(*controller.ProvisionController) error{controller.LeaderElection(*leader)}
	if *leaderNS != "" {
		opts = append(opts, controller.LeaderElectionNamespace(*leaderNS))
	}
	controller.NewProvisionController(ctx, kube, driver, p, opts...).Run(ctx)
}
