"""The Celery task names: the one place they are spelled (routing, the tasks, and whatever sends them)."""

TRAIN = "facerec.train"
ENROLL = "facerec.enroll"
SCHEDULED_TRAINING = "facerec.scheduled_training"
PLAN_RECOGNITION = "facerec.plan_recognition"
RECOGNIZE_CHUNK = "facerec.recognize_chunk"
FINISH_RECOGNITION = "facerec.finish_recognition"
RECOGNIZE_PHOTO = "facerec.recognize_photo"
SEARCH_FACES = "facerec.search_faces"  # one search, for someone waiting (interactive queue)
OPTIMIZE_INDEX = "facerec.optimize_index"  # fold a recognition job's new faces into the ANN index
SEARCH_PEOPLE = "facerec.search_people"  # a search job: every person of a model against an index
CLUSTER_FACES = "facerec.cluster_faces"  # a cluster job: an index's faces grouped by person
ERASE = "facerec.erase"  # an erasure: one person removed from datasets, models, indexes and results

# The task that starts a job of each type, and starts it again when it is resumed.
ENTRY_TASKS = {"training": TRAIN, "enroll": ENROLL, "recognition": PLAN_RECOGNITION, "search": SEARCH_PEOPLE,
               "cluster": CLUSTER_FACES, "erasure": ERASE}
