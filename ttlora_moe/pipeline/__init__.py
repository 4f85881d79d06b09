"""The pipeline's services: DVC (``dvc``, ``dvc_remote``, ``dvc_tracking``), task registration
(``task_validation``, ``registration``, ``params_file``), MLflow (``mlflow_client``, ``tracking``,
``pyfunc``, ``models``, ``gates``, ``bundles``), S3 (``s3``) and server checks (``services``)."""
