{{/* Release-scoped name prefix: the release name, or release-chart when the release name lacks the chart's. */}}
{{- define "agentaudit.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "agentaudit.collectorName" -}}
{{- printf "%s-collector" (include "agentaudit.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "agentaudit.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: agentaudit
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "agentaudit.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Pod-level security: the image's non-root uid; fsGroup makes the journal volume writable by it. */}}
{{- define "agentaudit.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.uid }}
runAsGroup: {{ .Values.uid }}
fsGroup: {{ .Values.uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "agentaudit.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The init container that copies keys from a Secret volume (group-readable under fsGroup, which agentaudit
refuses) into a memory-backed emptyDir as 0600 files owned by the pod's uid. Args: root context, key names. */}}
{{- define "agentaudit.installKeys" -}}
{{- $root := index . 0 -}}
- name: install-keys
  image: {{ include "agentaudit.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command:
    - install
    - -m
    - "0600"
    {{- range (index . 1) }}
    - /run/secrets/agentaudit-secret/{{ . }}
    {{- end }}
    - /run/secrets/agentaudit/
  securityContext:
    {{- include "agentaudit.containerSecurityContext" $root | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {cpu: 100m, memory: 32Mi}
  volumeMounts:
    - name: keys-secret
      mountPath: /run/secrets/agentaudit-secret
      readOnly: true
    - name: keys
      mountPath: /run/secrets/agentaudit
{{- end -}}

{{/* The sidecar configuration: the user's sidecar.config overlaid with what the chart owns (listeners, paths). */}}
{{- define "agentaudit.sidecarConfig" -}}
{{- $forward := .Values.sidecar.forwardTarget -}}
{{- if and (not $forward) .Values.collector.enabled -}}
{{- $forward = printf "%s:%v" (include "agentaudit.collectorName" .) .Values.collector.port -}}
{{- end -}}
{{- $owned := dict
  "server" (dict "listen" (list "unix:///run/agentaudit/gateway.sock"))
  "journal" (dict "path" "/var/lib/agentaudit/journal.db" "signing_key" "/run/secrets/agentaudit/signing.key")
  "audit" (dict "hmac_key" "/run/secrets/agentaudit/hmac.key")
  "policy" (dict "path" "/etc/agentaudit/policy.yaml")
  "health" (dict "listen" (list (printf "0.0.0.0:%v" .Values.sidecar.healthPort)))
  "metrics" (dict "listen" (printf "0.0.0.0:%v" .Values.sidecar.metricsPort))
  "forward" (dict "target" $forward)
-}}
{{- $tls := .Values.sidecar.collectorTLS -}}
{{- if and $forward $tls.enabled -}}
{{- $verify := dict "ca" "/etc/agentaudit/tls/collector-ca.crt" -}}
{{- if $tls.serverName -}}{{- $_ := set $verify "server_name" $tls.serverName -}}{{- end -}}
{{- $_ := set $owned.forward "tls" $verify -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.sidecar.config) $owned) -}}
{{- end -}}
