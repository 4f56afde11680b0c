"""The frame-extracting worker: SQS → S3 → OpenCV → TF Serving (gRPC) → S3 + SNS.

It never imports TensorFlow; it speaks TF Serving's protocol through framescale.tfserving.
"""
