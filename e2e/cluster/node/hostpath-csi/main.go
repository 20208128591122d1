// hostpath-csi: the e2e cluster's CSI driver. A volume is an ext4 file system in a sparse image
// file under --state, loop-mounted at --state/volumes/<id> for as long as the volume exists (pods
// get bind mounts of it). A snapshot is a copy of the image taken while the file system is frozen
// (fsfreeze), so it is crash-consistent: a point in time, as a storage array's snapshot is. A
// volume made from a snapshot (or cloned from a volume) starts as a copy of that image.
// One process serves the CSI identity, controller and node services on --endpoint, and registers
// itself with the kubelet through the plugin-registration socket in --registration-dir (the job of
// node-driver-registrar, which the Go module proxy does not serve).
//
// The real external-provisioner, external-attacher and external-snapshotter talk to --endpoint;
// the kubelet mounts volumes through NodePublishVolume (a bind mount). Why not
// csi-driver-host-path: its module is not served by the proxy this project builds from.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

const version = "1.0.0"

type volume struct {
	Name     string `json:"name"`
	Capacity int64  `json:"capacity"`
	// Node the volume is attached to (ControllerPublishVolume), empty when detached.
	AttachedTo string `json:"attachedTo,omitempty"`
}

type snapshot struct {
	Name      string `json:"name"`
	Source    string `json:"source"`
	Size      int64  `json:"size"`
	CreatedAt int64  `json:"createdAt"`
}

type state struct {
	Volumes   map[string]*volume   `json:"volumes"`
	Snapshots map[string]*snapshot `json:"snapshots"`
}

type driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer
	registration.UnimplementedRegistrationServer

	name, nodeID, dir, endpoint string
	mu                          sync.Mutex
	st                          state
}

func (d *driver) volDir(id string) string   { return filepath.Join(d.dir, "volumes", id) }
func (d *driver) volImage(id string) string { return filepath.Join(d.dir, "images", id+".img") }
func (d *driver) snapImage(id string) string {
	return filepath.Join(d.dir, "snapshots", id+".img")
}

// id derives a stable id from a CSI name, so a retried Create finds what the first one made.
func id(prefix, name string) string {
	h := sha256.Sum256([]byte(name))
	return prefix + hex.EncodeToString(h[:8])
}

func (d *driver) load() error {
	d.st = state{Volumes: map[string]*volume{}, Snapshots: map[string]*snapshot{}}
	b, err := os.ReadFile(filepath.Join(d.dir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return json.Unmarshal(b, &d.st)
}

// save writes the state atomically; callers hold d.mu.
func (d *driver) save() error {
	b, err := json.MarshalIndent(&d.st, "", " ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(d.dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(d.dir, "state.json"))
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// copyImage copies an image file, keeping it sparse.
func copyImage(src, dst string) error {
	return run("cp", "--sparse=always", src, dst)
}

// newFilesystem makes an empty ext4 file system of size bytes in image (an empty root, as the
// pods of a fresh volume expect: no lost+found, writable by any uid).
func newFilesystem(image string, size int64) error {
	f, err := os.Create(image)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", image)
}

// grow makes the file system in image at least size bytes.
func grow(image string, size int64) error {
	fi, err := os.Stat(image)
	if err != nil {
		return err
	}
	if fi.Size() >= size {
		return nil
	}
	if err := os.Truncate(image, size); err != nil {
		return err
	}
	// e2fsck exits 1 when it corrected something: a resize may go on.
	if err := exec.Command("e2fsck", "-f", "-p", image).Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 1 {
			return fmt.Errorf("e2fsck %s: %v", image, err)
		}
	}
	return run("resize2fs", image)
}

// mountVolume loop-mounts a volume's image at its directory (nothing if it is mounted).
func (d *driver) mountVolume(id string, fresh bool) error {
	dir := d.volDir(id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if mounted(dir) {
		return nil
	}
	if err := run("mount", "-o", "loop", d.volImage(id), dir); err != nil {
		return err
	}
	if fresh {
		_ = os.Remove(filepath.Join(dir, "lost+found"))
		return os.Chmod(dir, 0o777)
	}
	return nil
}

func (d *driver) unmountVolume(id string) error {
	dir := d.volDir(id)
	for mounted(dir) {
		if err := unix.Unmount(dir, 0); err != nil {
			return fmt.Errorf("unmount %s: %v", dir, err)
		}
	}
	return os.Remove(dir)
}

// frozen runs fn while the volume's file system accepts no writes (fsfreeze): what fn copies of
// the image is one point in time of the file system, with its journal.
func (d *driver) frozen(id string, fn func() error) error {
	dir := d.volDir(id)
	if err := run("fsfreeze", "--freeze", dir); err != nil {
		return err
	}
	err := fn()
	if uerr := run("fsfreeze", "--unfreeze", dir); err == nil {
		err = uerr
	}
	return err
}

// usedBytes is what a file system holds (its blocks in use).
func usedBytes(dir string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) != nil {
		return 0
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

func mountOnly(caps []*csi.VolumeCapability) error {
	for _, c := range caps {
		if c.GetMount() == nil {
			return status.Error(codes.InvalidArgument, "only filesystem volumes (volumeMode: Filesystem) are supported")
		}
	}
	return nil
}

// ---- identity

func (d *driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: d.name, VendorVersion: version}, nil
}

func (d *driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{
		Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{
			Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}}}}, nil
}

func (d *driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// ---- controller

func (d *driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *driver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name missing")
	}
	if err := mountOnly(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	vid := id("vol-", req.GetName())
	capacity := req.GetCapacityRange().GetRequiredBytes()
	if capacity == 0 {
		capacity = 1 << 30
	}
	resp := &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: vid, CapacityBytes: capacity,
		ContentSource: req.GetVolumeContentSource()}}
	if v, ok := d.st.Volumes[vid]; ok {
		resp.Volume.CapacityBytes = v.Capacity
		return resp, nil
	}
	tmp := d.volImage(vid) + ".partial"
	_ = os.Remove(tmp)
	var err error
	fresh := false
	switch src := req.GetVolumeContentSource(); {
	case src.GetSnapshot() != nil:
		sid := src.GetSnapshot().GetSnapshotId()
		if _, ok := d.st.Snapshots[sid]; !ok {
			return nil, status.Errorf(codes.NotFound, "snapshot %s not found", sid)
		}
		err = copyImage(d.snapImage(sid), tmp)
	case src.GetVolume() != nil:
		sv := src.GetVolume().GetVolumeId()
		if _, ok := d.st.Volumes[sv]; !ok {
			return nil, status.Errorf(codes.NotFound, "volume %s not found", sv)
		}
		err = d.frozen(sv, func() error { return copyImage(d.volImage(sv), tmp) })
	default:
		fresh = true
		err = newFilesystem(tmp, capacity)
	}
	if err == nil {
		err = grow(tmp, capacity)
	}
	if err == nil {
		err = os.Rename(tmp, d.volImage(vid))
	}
	if err == nil {
		err = d.mountVolume(vid, fresh)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return nil, status.Errorf(codes.Internal, "create %s: %v", vid, err)
	}
	d.st.Volumes[vid] = &volume{Name: req.GetName(), Capacity: capacity}
	if err := d.save(); err != nil {
		return nil, status.Errorf(codes.Internal, "save state: %v", err)
	}
	log.Printf("created volume %s (%s, %d bytes)", vid, req.GetName(), capacity)
	return resp, nil
}

func (d *driver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	vid := req.GetVolumeId()
	if v, ok := d.st.Volumes[vid]; ok && v.AttachedTo != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is attached to %s", vid, v.AttachedTo)
	}
	if err := d.unmountVolume(vid); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "delete %s: %v", vid, err)
	}
	if err := os.Remove(d.volImage(vid)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "delete %s: %v", vid, err)
	}
	delete(d.st.Volumes, vid)
	if err := d.save(); err != nil {
		return nil, status.Errorf(codes.Internal, "save state: %v", err)
	}
	log.Printf("deleted volume %s", vid)
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *driver) ControllerPublishVolume(_ context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.st.Volumes[req.GetVolumeId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetVolumeId())
	}
	if v.AttachedTo != "" && v.AttachedTo != req.GetNodeId() {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is attached to %s", req.GetVolumeId(), v.AttachedTo)
	}
	v.AttachedTo = req.GetNodeId()
	if err := d.save(); err != nil {
		return nil, status.Errorf(codes.Internal, "save state: %v", err)
	}
	log.Printf("attached %s to %s", req.GetVolumeId(), req.GetNodeId())
	return &csi.ControllerPublishVolumeResponse{PublishContext: map[string]string{}}, nil
}

func (d *driver) ControllerUnpublishVolume(_ context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.st.Volumes[req.GetVolumeId()]; ok {
		v.AttachedTo = ""
		if err := d.save(); err != nil {
			return nil, status.Errorf(codes.Internal, "save state: %v", err)
		}
	}
	log.Printf("detached %s from %s", req.GetVolumeId(), req.GetNodeId())
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

func (d *driver) ValidateVolumeCapabilities(_ context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if err := mountOnly(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeCapabilities: req.GetVolumeCapabilities()}}, nil
}

func (d *driver) CreateSnapshot(_ context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if req.GetName() == "" || req.GetSourceVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "name or source volume missing")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	sid := id("snap-", req.GetName())
	s, ok := d.st.Snapshots[sid]
	if ok && s.Source != req.GetSourceVolumeId() {
		return nil, status.Errorf(codes.AlreadyExists, "snapshot %s exists for another volume", req.GetName())
	}
	if !ok {
		if _, ok := d.st.Volumes[req.GetSourceVolumeId()]; !ok {
			return nil, status.Errorf(codes.NotFound, "volume %s not found", req.GetSourceVolumeId())
		}
		tmp := d.snapImage(sid) + ".partial"
		_ = os.Remove(tmp)
		src := req.GetSourceVolumeId()
		err := d.frozen(src, func() error { return copyImage(d.volImage(src), tmp) })
		if err == nil {
			err = os.Rename(tmp, d.snapImage(sid))
		}
		if err != nil {
			_ = os.Remove(tmp)
			return nil, status.Errorf(codes.Internal, "snapshot %s: %v", sid, err)
		}
		s = &snapshot{Name: req.GetName(), Source: src, Size: usedBytes(d.volDir(src)), CreatedAt: time.Now().UnixNano()}
		d.st.Snapshots[sid] = s
		if err := d.save(); err != nil {
			return nil, status.Errorf(codes.Internal, "save state: %v", err)
		}
		log.Printf("snapshot %s of %s (%d bytes)", sid, s.Source, s.Size)
	}
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{SnapshotId: sid, SourceVolumeId: s.Source,
		SizeBytes: s.Size, CreationTime: timestamppb.New(time.Unix(0, s.CreatedAt)), ReadyToUse: true}}, nil
}

func (d *driver) DeleteSnapshot(_ context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := os.Remove(d.snapImage(req.GetSnapshotId())); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "delete snapshot: %v", err)
	}
	delete(d.st.Snapshots, req.GetSnapshotId())
	if err := d.save(); err != nil {
		return nil, status.Errorf(codes.Internal, "save state: %v", err)
	}
	log.Printf("deleted snapshot %s", req.GetSnapshotId())
	return &csi.DeleteSnapshotResponse{}, nil
}

// ---- node

func (d *driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.nodeID}, nil
}

func (d *driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{}, nil
}

// mounted tells whether target is a mount point (a bind mount of the same filesystem has the
// same device as its parent, so only the mount table can tell).
func mounted(target string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	target = filepath.Clean(target)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescape(f[4]) == target {
			return true
		}
	}
	return false
}

// unescape undoes mountinfo's octal escapes (\040 for a space, ...).
func unescape(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var out []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				out = append(out, byte(n))
				i += 3
				continue
			}
		}
		out = append(out, s[i])
	}
	return string(out)
}

func (d *driver) NodePublishVolume(_ context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target, vid := req.GetTargetPath(), req.GetVolumeId()
	if target == "" || vid == "" {
		return nil, status.Error(codes.InvalidArgument, "target path or volume id missing")
	}
	if err := mountOnly([]*csi.VolumeCapability{req.GetVolumeCapability()}); err != nil {
		return nil, err
	}
	d.mu.Lock()
	v, ok := d.st.Volumes[vid]
	d.mu.Unlock()
	if !ok {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", vid)
	}
	if v.AttachedTo != d.nodeID {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not attached to %s", vid, d.nodeID)
	}
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "mkdir %s: %v", target, err)
	}
	if mounted(target) {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	if err := unix.Mount(d.volDir(vid), target, "", unix.MS_BIND, ""); err != nil {
		return nil, status.Errorf(codes.Internal, "bind mount %s: %v", target, err)
	}
	if req.GetReadonly() {
		if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
			_ = unix.Unmount(target, 0)
			return nil, status.Errorf(codes.Internal, "read-only remount %s: %v", target, err)
		}
	}
	log.Printf("published %s at %s (read-only %v)", vid, target, req.GetReadonly())
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	for mounted(target) {
		if err := unix.Unmount(target, 0); err != nil {
			return nil, status.Errorf(codes.Internal, "unmount %s: %v", target, err)
		}
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "remove %s: %v", target, err)
	}
	log.Printf("unpublished %s from %s", req.GetVolumeId(), target)
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// ---- kubelet plugin registration

func (d *driver) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{Type: registration.CSIPlugin, Name: d.name, Endpoint: d.endpoint,
		SupportedVersions: []string{version}}, nil
}

func (d *driver) NotifyRegistrationStatus(_ context.Context, s *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if !s.PluginRegistered {
		log.Printf("the kubelet refused the registration: %s", s.Error)
	} else {
		log.Printf("registered with the kubelet")
	}
	return &registration.RegistrationStatusResponse{}, nil
}

func listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	_ = os.Remove(path)
	return net.Listen("unix", path)
}

func logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	resp, err := h(ctx, req)
	if err != nil {
		log.Printf("%s: %v", info.FullMethod, err)
	}
	return resp, err
}

func main() {
	d := &driver{}
	var regDir string
	flag.StringVar(&d.name, "driver-name", "hostpath.csi.e2e.local", "CSI driver name")
	flag.StringVar(&d.nodeID, "node-id", "", "this node's name")
	flag.StringVar(&d.dir, "state", "", "directory of volumes, snapshots and state.json")
	flag.StringVar(&d.endpoint, "endpoint", "", "unix socket path of the CSI services")
	flag.StringVar(&regDir, "registration-dir", "", "the kubelet's plugins_registry directory")
	flag.Parse()
	if d.nodeID == "" || d.dir == "" || d.endpoint == "" || regDir == "" {
		log.Fatal("--node-id, --state, --endpoint and --registration-dir are required")
	}
	for _, sub := range []string{"volumes", "images", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(d.dir, sub), 0o755); err != nil {
			log.Fatal(err)
		}
	}
	if err := d.load(); err != nil {
		log.Fatalf("state: %v", err)
	}
	// After a restart: every volume is mounted again.
	for id := range d.st.Volumes {
		if err := d.mountVolume(id, false); err != nil {
			log.Fatalf("volume %s: %v", id, err)
		}
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	l, err := listen(d.endpoint)
	if err != nil {
		log.Fatalf("listen %s: %v", d.endpoint, err)
	}
	go func() { log.Fatal(srv.Serve(l)) }()

	reg := grpc.NewServer()
	registration.RegisterRegistrationServer(reg, d)
	regSock := filepath.Join(regDir, d.name+"-reg.sock")
	rl, err := listen(regSock)
	if err != nil {
		log.Fatalf("listen %s: %v", regSock, err)
	}
	go func() { log.Fatal(reg.Serve(rl)) }()
	log.Printf("%s %s serving %s, registration %s", d.name, version, d.endpoint, regSock)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	reg.Stop()
	srv.Stop()
	_ = os.Remove(regSock)
}
