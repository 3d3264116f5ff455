{{/* Object name: <namePrefix>-<suffix>. */}}
{{- define "pas.name" -}}
{{- printf "%s-%s" .root.Values.namePrefix .suffix | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries; `component` is manager, programmer or llm-sim. */}}
{{- define "pas.labels" -}}
app.kubernetes.io/name: {{ .root.Values.namePrefix }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: programmer-pool
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* Selector labels (immutable in a Deployment: never add to them). */}}
{{- define "pas.selector" -}}
app.kubernetes.io/name: {{ .root.Values.namePrefix }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "pas.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The headless Service's DNS name the manager resolves. */}}
{{- define "pas.discoveryName" -}}
{{- printf "%s.%s.svc.cluster.local" (include "pas.name" (dict "root" . "suffix" "programmers")) .Release.Namespace -}}
{{- end -}}

{{/* Where the TLS and token Secrets are mounted. */}}
{{- define "pas.tlsDir" -}}/var/run/secrets/pas/tls{{- end -}}
{{- define "pas.authDir" -}}/var/run/secrets/pas/auth{{- end -}}

{{/* Pod annotations: config checksum (with rollOnConfigChange, a config change rolls the pods) and
Prometheus scraping. */}}
{{- define "pas.podAnnotations" -}}
{{- if .root.Values.rollOnConfigChange }}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- end }}
{{- if .root.Values.metricsAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- if .root.Values.tls.enabled }}
prometheus.io/scheme: https
{{- end }}
{{- end }}
{{- end -}}

{{- define "pas.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "pas.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The config volume (ConfigMap → /etc/pas/pool.yaml). */}}
{{- define "pas.configVolume" -}}
- name: config
  configMap:
    name: {{ include "pas.name" (dict "root" . "suffix" "config") }}
    items:
      - key: pool.yaml
        path: pool.yaml
{{- end -}}

{{/*
Probes. Plaintext: kubelet's native gRPC probes on grpc.health.v1 ("" = the process, `service` =
NOT_SERVING while starting or draining). With TLS kubelet cannot speak gRPC over TLS: the manager
gets HTTPS GET /health (open, certificate not verified by kubelet), programmers TCP probes (they
demand a client certificate in the handshake; the manager watches their grpc.health over mTLS).
*/}}
{{- define "pas.probes" -}}
{{- $tls := .root.Values.tls.enabled -}}
{{- range $probe := list (dict "name" "startupProbe" "service" "" "period" 2 "failures" 60) (dict "name" "livenessProbe" "service" "" "period" 10 "failures" 3) (dict "name" "readinessProbe" "service" $.service "period" 5 "failures" 2) }}
{{ $probe.name }}:
{{- if not $tls }}
  grpc:
    port: {{ $.port }}
    service: {{ $probe.service | quote }}
{{- else if eq $.component "manager" }}
  httpGet:
    path: /health
    port: admin
    scheme: HTTPS
{{- else }}
  tcpSocket:
    port: grpc
{{- end }}
  periodSeconds: {{ $probe.period }}
  failureThreshold: {{ $probe.failures }}
{{- end }}
{{- end -}}

{{/* Refuses values that would deploy a pool that cannot start or cannot drain. */}}
{{- define "pas.validate" -}}
{{- if and .Values.tls.enabled .Values.insecure -}}
{{- fail "insecure: true and tls.enabled: true contradict each other (set insecure: false)" -}}
{{- end -}}
{{- if and (not .Values.tls.enabled) (not .Values.insecure) -}}
{{- fail "without tls.enabled, the processes refuse a non-loopback address: set insecure: true (throw-away clusters only) or enable tls" -}}
{{- end -}}
{{- if and .Values.auth.enabled (not .Values.tls.enabled) -}}
{{- fail "auth.enabled needs tls.enabled: bearer tokens must not cross the network in plaintext" -}}
{{- end -}}
{{- $p := .Values.programmers -}}
{{- if le (int $p.terminationGracePeriodSeconds) (add (int $p.preStopSleepS) (int $p.drainTimeoutS) | int) -}}
{{- fail (printf "programmers.terminationGracePeriodSeconds (%v) must exceed preStopSleepS + drainTimeoutS (%v + %v), or SIGKILL cuts the drain short" $p.terminationGracePeriodSeconds $p.preStopSleepS $p.drainTimeoutS) -}}
{{- end -}}
{{- end -}}
