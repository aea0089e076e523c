"""Everything that speaks Label Studio's language, one module per concept:

=====================  ===================================================================================
``client``             the one Label Studio client of a process (auth, REST through label-studio-sdk, URIs)
``auth``               the ``Authorization`` header from the API key (personal access token exchange)
``uris``               where a task's image URI is read from (uploads, local files, presigned cloud objects)
``label_config``       the parts of a labeling config the backend uses (output tags, images, prompt tools)
``prompts``            interactive context → prompts, and the frames from percent to the decoded image
``results``            masks → ``brushlabels`` or ``polygonlabels`` regions and a task's prediction
``polygons``           a mask → the polygon rings Label Studio can show (parts, bridged holes, simplified)
``brush_rle``          the brush RLE codec of those regions (encoder for results, decoder for training)
``regions``            annotation regions (brush, polygon, rectangle) → training masks; which annotation counts
=====================  ===================================================================================
"""
