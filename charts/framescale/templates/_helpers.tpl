{{/*
Names, labels and small helpers shared by the templates.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "framescale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: fullnameOverride, or `<release>-<name>`, shortened to the
release name alone when it already contains the chart name.
*/}}
{{- define "framescale.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "framescale.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* `name-version` for the helm.sh/chart label. */}}
{{- define "framescale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: the stable subset that Deployments and DaemonSets select on. Never add a label
here that can change between releases: selectors are immutable.
*/}}
{{- define "framescale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "framescale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The full label set of every resource. */}}
{{- define "framescale.labels" -}}
helm.sh/chart: {{ include "framescale.chart" . }}
{{ include "framescale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: framescale
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Operator: names and labels. */}}
{{- define "framescale.operator.fullname" -}}
{{- printf "%s-operator" (include "framescale.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "framescale.operator.selectorLabels" -}}
{{ include "framescale.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "framescale.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "framescale.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}: the digest wins, then the tag, then the chart's
appVersion. Call with (dict "image" .image "root" $ "suffix" "-gpu"); suffix is optional and is
appended to the tag unless the tag already ends with it.
*/}}
{{- define "framescale.image" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- $tag := default .root.Chart.AppVersion $image.tag | toString -}}
{{- if and .suffix (not (hasSuffix .suffix $tag)) -}}
{{- $tag = printf "%s%s" $tag .suffix -}}
{{- end -}}
{{- printf "%s:%s" $image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
A value as an environment variable string. Helm reads numbers from YAML as float64, and Go prints
large ones in exponent form (10737418240 -> 1.073741824e+10), which an integer setting would
reject; whole numbers are printed as integers. Maps and lists become JSON.
*/}}
{{- define "framescale.envValue" -}}
{{- $v := . -}}
{{- if or (kindIs "map" $v) (kindIs "slice" $v) -}}
{{- toJson $v -}}
{{- else if kindIs "float64" $v -}}
{{- if eq $v (float64 (int64 $v)) -}}
{{- int64 $v -}}
{{- else -}}
{{- $v -}}
{{- end -}}
{{- else -}}
{{- $v | toString -}}
{{- end -}}
{{- end -}}

{{/*
Environment variables from a settings map: camelCase keys become PREFIX + UPPER_SNAKE names;
null values are left out, so the component's own default applies.
Call with (dict "prefix" "FRAMESCALE_WORKER_" "settings" .settings).
*/}}
{{- define "framescale.settingsEnv" -}}
{{- $prefix := .prefix -}}
{{- range $key, $value := .settings }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ printf "%s%s" $prefix ($key | snakecase | upper) }}
  value: {{ include "framescale.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* AWS_REGION and AWS_ENDPOINT_URL, for every container that talks to AWS. */}}
{{- define "framescale.awsEnv" -}}
- name: AWS_REGION
  value: {{ .Values.aws.region | quote }}
{{- with .Values.aws.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
The service account token, mounted only into the containers that call the Kubernetes API. Pods
set automountServiceAccountToken: false, so sidecars and init containers get no token; this
projected volume gives the one container that needs it the same files the automount would.
*/}}
{{- define "framescale.apiTokenVolume" -}}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end -}}

{{- define "framescale.apiTokenMount" -}}
- name: kube-api-access
  mountPath: /var/run/secrets/kubernetes.io/serviceaccount
  readOnly: true
{{- end -}}

{{/*
Pipelines with pipelineDefaults merged in. Returns JSON {"items": [...]} (templates can only
return strings): `fromJson (include "framescale.pipelines" .)`. Checks what the schema cannot
see across the merge and fails with the pipeline's name in the message.
*/}}
{{- define "framescale.pipelines" -}}
{{- $items := list -}}
{{- $seen := dict -}}
{{- range $index, $raw := .Values.pipelines -}}
{{- $p := mergeOverwrite (deepCopy $.Values.pipelineDefaults) (deepCopy $raw) -}}
{{- $where := printf "pipelines[%d] (%s)" $index ($raw.name | default "unnamed") -}}
{{- /* A pipeline's nodeSelector replaces the default whole: merging would keep the default label. */ -}}
{{- if and (hasKey $raw "nodeGroup") (hasKey $raw.nodeGroup "nodeSelector") -}}
{{- $_ := set $p.nodeGroup "nodeSelector" $raw.nodeGroup.nodeSelector -}}
{{- end -}}
{{- if hasKey $seen $p.name -}}
{{- fail (printf "%s: the name %q is used by more than one pipeline" $where $p.name) -}}
{{- end -}}
{{- $_ := set $seen $p.name true -}}
{{- if not $p.nodeGroup.autoScalingGroupName -}}
{{- fail (printf "%s: nodeGroup.autoScalingGroupName is required (the EC2 Auto Scaling group the operator sizes)" $where) -}}
{{- end -}}
{{- if not $p.nodeGroup.nodeSelector -}}
{{- fail (printf "%s: nodeGroup.nodeSelector must select the pipeline's nodes; an empty selector would put workers on every node" $where) -}}
{{- end -}}
{{- if and (not $p.model.fromImage) (not $p.model.s3Uri) -}}
{{- fail (printf "%s: model.s3Uri is required (s3://bucket/prefix/ holding <version>/saved_model.pb), or set model.fromImage to serve the models baked into the TF Serving image" $where) -}}
{{- end -}}
{{- if gt (int $p.autoscaling.minReplicas) (int $p.autoscaling.maxReplicas) -}}
{{- fail (printf "%s: autoscaling.minReplicas (%v) must not exceed maxReplicas (%v)" $where $p.autoscaling.minReplicas $p.autoscaling.maxReplicas) -}}
{{- end -}}
{{- $batch := $p.worker.settings.batchSize | default 8 -}}
{{- if gt (int $batch) (int $p.tfServing.batching.maxBatchSize) -}}
{{- fail (printf "%s: worker.settings.batchSize (%v) exceeds tfServing.batching.maxBatchSize (%v); TF Serving would refuse every request" $where $batch $p.tfServing.batching.maxBatchSize) -}}
{{- end -}}
{{- with $p.tfServing.batching.allowedBatchSizes -}}
{{- if ne (int (last .)) (int $p.tfServing.batching.maxBatchSize) -}}
{{- fail (printf "%s: the last of tfServing.batching.allowedBatchSizes (%v) must equal maxBatchSize (%v)" $where (last .) $p.tfServing.batching.maxBatchSize) -}}
{{- end -}}
{{- end -}}
{{- $grace := $p.worker.settings.shutdownGraceSeconds | default 60 -}}
{{- if ge (float64 $grace) (float64 $p.terminationGracePeriodSeconds) -}}
{{- fail (printf "%s: terminationGracePeriodSeconds (%v) must exceed worker.settings.shutdownGraceSeconds (%v), or the kubelet kills the worker while it hands work back" $where $p.terminationGracePeriodSeconds $grace) -}}
{{- end -}}
{{- $items = append $items $p -}}
{{- end -}}
{{- toJson (dict "items" $items) -}}
{{- end -}}

{{/* Per-pipeline names. Call with (dict "root" $ "p" $pipeline). */}}
{{- define "framescale.pipeline.fullname" -}}
{{- printf "%s-%s" (include "framescale.fullname" .root) .p.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "framescale.pipeline.selectorLabels" -}}
{{ include "framescale.selectorLabels" .root }}
app.kubernetes.io/component: worker
framescale.io/pipeline: {{ .p.name }}
{{- end -}}

{{- define "framescale.pipeline.serviceAccountName" -}}
{{- if .p.serviceAccount.create -}}
{{- default (printf "%s-worker" (include "framescale.pipeline.fullname" .) | trunc 63 | trimSuffix "-") .p.serviceAccount.name -}}
{{- else -}}
{{- default "default" .p.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ServiceAccount annotations (a YAML map, or nothing): the IRSA role plus any others. Call with the serviceAccount values. */}}
{{- define "framescale.serviceAccountAnnotations" -}}
{{- $annotations := deepCopy (.annotations | default dict) -}}
{{- if .iamRoleArn -}}
{{- $_ := set $annotations "eks.amazonaws.com/role-arn" .iamRoleArn -}}
{{- end -}}
{{- with $annotations }}
{{- toYaml . }}
{{- end -}}
{{- end -}}

{{/* The uninstall clean-up hook's objects (cleanup-hook.yaml) share one name. */}}
{{- define "framescale.cleanup.fullname" -}}
{{- printf "%s-cleanup" (include "framescale.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Annotations of the uninstall clean-up hook's objects (cleanup-hook.yaml). Call with the hook
weight as a string: lower weights are created first.
*/}}
{{- define "framescale.cleanup.hookAnnotations" -}}
helm.sh/hook: pre-delete
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end -}}
