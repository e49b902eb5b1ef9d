// Command livenessprobe answers kubelet's liveness probe of a CSI driver with the
// driver's own Probe call, as the kubernetes-csi livenessprobe sidecar does. It stands in
// for that sidecar in the test cluster only because its module is not served by the Go
// module proxy this project builds from.
package main

import (
	"context"
	"flag"
	"log"
	"net/http"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	csiAddress := flag.String("csi-address", "/csi/csi.sock", "the driver's socket")
	endpoint := flag.String("http-endpoint", ":9808", "where /healthz is served")
	flag.Int("v", 0, "ignored (the sidecar's verbosity flag)")
	flag.Parse()
	conn, err := grpc.NewClient("unix://"+*csiAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("csi address %s: %v", *csiAddress, err)
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		res, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
		if err != nil || (res.GetReady() != nil && !res.GetReady().GetValue()) {
			log.Printf("probe failed: %v", err)
			http.Error(w, "driver not ready", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	log.Printf("serving /healthz on %s for %s", *endpoint, *csiAddress)
	log.Fatal(http.ListenAndServe(*endpoint, nil))
}
