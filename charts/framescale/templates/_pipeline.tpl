{{/*
Pieces of a pipeline's pod, shared by worker-daemonset.yaml and the checksum annotation.
Each is called with (dict "root" $ "p" $pipeline).
*/}}

{{/* TF Serving's batching parameters file (text protobuf, BatchingParameters). */}}
{{- define "framescale.pipeline.batchingConfig" -}}
{{- $b := .p.tfServing.batching -}}
max_batch_size { value: {{ int $b.maxBatchSize }} }
batch_timeout_micros { value: {{ int $b.batchTimeoutMicros }} }
max_enqueued_batches { value: {{ int $b.maxEnqueuedBatches }} }
num_batch_threads { value: {{ int $b.numBatchThreads }} }
{{- range $b.allowedBatchSizes }}
allowed_batch_sizes: {{ int . }}
{{- end }}
{{- end -}}

{{/* The namespace the worker writes its busy Lease in: the operator's leaseNamespace, or ours. */}}
{{- define "framescale.pipeline.leaseNamespace" -}}
{{- default .root.Release.Namespace .root.Values.operator.leaseNamespace -}}
{{- end -}}
