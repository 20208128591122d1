// cri-clean: stops and removes every pod sandbox of a CRI runtime (containerd), so that the CNI
// plugins release their addresses and interfaces and nothing of the e2e node keeps running
// after the kubelet is stopped. crictl does the same (`crictl rmp -fa`), but its module is not
// served by the proxy this project builds from.
package main

import (
	"context"
	"flag"
	"log"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	endpoint := flag.String("endpoint", "", "the runtime's unix socket path")
	flag.Parse()
	if *endpoint == "" {
		log.Fatal("--endpoint is required")
	}
	conn, err := grpc.NewClient("unix://"+*endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	list, err := rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		log.Fatalf("list pod sandboxes: %v", err)
	}
	failed := false
	for _, s := range list.Items {
		name := s.Metadata.Namespace + "/" + s.Metadata.Name
		if _, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			log.Printf("stop %s: %v", name, err)
			failed = true
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
			log.Printf("remove %s: %v", name, err)
			failed = true
			continue
		}
		log.Printf("removed %s", name)
	}
	if failed {
		log.Fatal("some pod sandboxes remain")
	}
}
