{{/* Names, labels, images, credentials and the pieces every pod shares. */}}

{{- define "llava-labeler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llava-labeler.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: "<fullname>-<component>" (kept under 63 characters). */}}
{{- define "llava-labeler.componentName" -}}
{{- printf "%s-%s" (include "llava-labeler.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llava-labeler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llava-labeler.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "llava-labeler.labels" -}}
{{ include "llava-labeler.selectorLabels" . }}
app.kubernetes.io/part-of: llava-labeler
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* image reference from {repository, tag, digest}; tag defaults to the chart's appVersion. */}}
{{- define "llava-labeler.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "llava-labeler.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The Secret the chart generates (bundled database and broker credentials, console password). */}}
{{- define "llava-labeler.secretName" -}}
{{- include "llava-labeler.fullname" . -}}
{{- end -}}

{{- define "llava-labeler.postgresqlHost" -}}
{{- include "llava-labeler.componentName" (dict "ctx" . "component" "postgresql") -}}
{{- end -}}

{{- define "llava-labeler.redisHost" -}}
{{- include "llava-labeler.componentName" (dict "ctx" . "component" "redis") -}}
{{- end -}}

{{/* Environment entries that read a value from a Secret key. */}}
{{- define "llava-labeler.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{- define "llava-labeler.databaseUrlEnv" -}}
{{- if .Values.postgresql.enabled -}}
{{ include "llava-labeler.secretEnv" (dict "name" "LLAVA_LABELER_DATABASE_URL" "secret" (include "llava-labeler.secretName" .) "key" "database-url") }}
{{- else -}}
{{ include "llava-labeler.secretEnv" (dict "name" "LLAVA_LABELER_DATABASE_URL" "secret" .Values.postgresql.external.existingSecret "key" .Values.postgresql.external.urlKey) }}
{{- end -}}
{{- end -}}

{{- define "llava-labeler.brokerUrlEnv" -}}
{{- if .Values.redis.enabled -}}
{{ include "llava-labeler.secretEnv" (dict "name" "LLAVA_LABELER_BROKER_URL" "secret" (include "llava-labeler.secretName" .) "key" "broker-url") }}
{{- else -}}
{{ include "llava-labeler.secretEnv" (dict "name" "LLAVA_LABELER_BROKER_URL" "secret" .Values.redis.external.existingSecret "key" .Values.redis.external.urlKey) }}
{{- end -}}
{{- end -}}

{{/* The predictor's in-cluster URL (the KServe predictor Service, which also carries a canary split). */}}
{{/* The predictor's API key, for the predictor itself and for the workers that call it. */}}
{{- define "llava-labeler.predictorApiKeyEnv" -}}
{{ include "llava-labeler.secretEnv" (dict "name" "LLAVA_LABELER_SERVING__API_KEY" "secret" (.Values.predictor.apiKey.existingSecret | default (include "llava-labeler.secretName" .)) "key" .Values.predictor.apiKey.key) }}
{{- end -}}

{{- define "llava-labeler.engineUrl" -}}
{{- if .Values.workers.engineUrl -}}
{{- .Values.workers.engineUrl -}}
{{- else -}}
{{- printf "http://%s-predictor.%s.svc.cluster.local" (include "llava-labeler.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Pod-level settings every pod shares: security context, pull secrets. */}}
{{- define "llava-labeler.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "llava-labeler.containerSecurityContext" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Writable scratch for read-only root filesystems: /tmp and the app user's home. */}}
{{- define "llava-labeler.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
- name: home
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{- define "llava-labeler.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/app
{{- end -}}

{{/* Shared memory for torch / NCCL / MPI on GPU pods. */}}
{{- define "llava-labeler.shmVolume" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ . }}
{{- end -}}

{{/* GPU node placement shared by the predictor and the retrain job. */}}
{{- define "llava-labeler.gpuPlacement" -}}
{{- with .Values.gpuNodes.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.gpuNodes.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Placement for CPU pods: {nodeSelector, tolerations, affinity} of a component. */}}
{{- define "llava-labeler.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A credential kept across upgrades: the value already in the chart's Secret, else a new random one. */}}
{{- define "llava-labeler.persistentRandom" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace (include "llava-labeler.secretName" .ctx) -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy egress rule: HTTPS to addresses outside the excepted (private) ranges. */}}
{{- define "llava-labeler.externalEgress" -}}
- to:
    - ipBlock:
        cidr: {{ .cidr }}
        {{- with .except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
  ports:
    {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end -}}
