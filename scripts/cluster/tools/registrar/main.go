// Command registrar registers a CSI driver with kubelet through the plugin registration
// API (k8s.io/kubelet pluginregistration/v1), as node-driver-registrar does. It stands in
// for that sidecar in the test cluster only because its module is not served by the Go
// module proxy this project builds from; see docs/TESTING.md.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registration struct {
	registerapi.UnimplementedRegistrationServer
	driver   string
	endpoint string
}

func (r *registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: r.driver, Endpoint: r.endpoint, SupportedVersions: []string{"1.0.0"}}, nil
}

func (r *registration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		log.Printf("kubelet refused the registration of %s: %s", r.driver, s.Error)
		os.Exit(1)
	}
	log.Printf("kubelet registered %s at %s", r.driver, r.endpoint)
	return &registerapi.RegistrationStatusResponse{}, nil
}

// driverName asks the driver's own socket for its name, retrying until it answers.
func driverName(address string) string {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("csi address %s: %v", address, err)
	}
	defer conn.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			return info.GetName()
		}
		log.Printf("waiting for the driver at %s: %v", address, err)
		time.Sleep(time.Second)
	}
}

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "the driver's socket inside this container")
	kubeletPath := flag.String("kubelet-registration-path", "", "the driver's socket as kubelet sees it")
	registrationDir := flag.String("registration-dir", "/registration", "kubelet's plugins_registry directory")
	flag.Int("v", 0, "ignored (node-driver-registrar's verbosity flag)")
	flag.Parse()
	if *kubeletPath == "" {
		log.Fatal("--kubelet-registration-path is required")
	}
	name := driverName(*csiAddress)
	sock := filepath.Join(*registrationDir, name+"-reg.sock")
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatalf("listen %s: %v", sock, err)
	}
	srv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(srv, &registration{driver: name, endpoint: *kubeletPath})
	go func() {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
		<-stop
		srv.Stop()
		_ = os.Remove(sock)
	}()
	log.Printf("serving the registration of %s on %s", name, sock)
	if err := srv.Serve(l); err != nil {
		log.Fatal(err)
	}
}
