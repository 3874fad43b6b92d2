# The kube-haproxy kube-proxy image: the patched kube-proxy (`make build`)
# and Debian's HAProxy. Built by `make image` (hack/image.sh) from the
# repository root, after `make build`.
#
# The binary is linked against the build host's glibc: the base image is the
# Debian release the project builds on (12, bookworm) or a later one.
ARG DEBIAN_RELEASE=bookworm
FROM debian:${DEBIAN_RELEASE}-slim

# haproxy: the data plane; nftables, iptables, conntrack: what kube-proxy's
# own code paths call (the nftables proxier serves UDP and SCTP ports);
# keepalived: the VRRP pair of the central and external load balancer
# (scopes cluster and external); libcap2-bin only to set file capabilities
# below.
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy nftables iptables conntrack keepalived ca-certificates libcap2-bin \
 && rm -rf /var/lib/apt/lists/*

COPY _output/bin/kube-proxy /usr/local/bin/kube-proxy
# Scopes cluster and external: the LoadBalancer ingress IP controller, and
# the keepalived configuration and health check of the VRRP pair.
COPY _output/bin/lb-controller _output/bin/keepalived-config /usr/local/bin/

# Non-root operation: a user for kube-proxy and HAProxy, a state directory it
# owns, and file capabilities so that, run as that user with the
# capabilities in its bounding set, kube-proxy can program routes and
# nftables and HAProxy can bind Service ports below 1024. Setting conntrack
# sysctls still needs root: run `kube-proxy --init-only` as root first (an
# init container), as upstream documents for kube-proxy.
RUN useradd --system --uid 65532 --user-group --no-create-home --home-dir /nonexistent kube-proxy \
 && install -d -o 65532 -g 65532 -m 0750 /var/run/kube-haproxy \
 && setcap cap_net_admin,cap_net_raw+ep /usr/local/bin/kube-proxy \
 && setcap cap_net_admin,cap_net_bind_service+ep /usr/sbin/haproxy \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y

# The default user stays root, like upstream's kube-proxy image, so that the
# DaemonSet kubeadm deploys (privileged, no runAsUser) works unchanged; set
# runAsUser: 65532 in the pod to run without root.
ENTRYPOINT ["/usr/local/bin/kube-proxy"]
